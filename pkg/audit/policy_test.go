package audit

import (
	"strings"
	"testing"

	"github.com/sortie-fleet/sortie/pkg/infra"
)

func TestCovers(t *testing.T) {
	tests := []struct {
		pattern, target string
		want            bool
	}{
		{"*", "s3:*", true},
		{"s3:*", "s3:*", true},
		{"s3:get*", "s3:*", false},
		{"s3:putobject", "s3:*", false},
		{"s3:putobject", "s3:putobject", true},
		{"s3:put*", "s3:putobject", true},
		{"s3:?utobject", "s3:putobject", true},
		{"s3:putobjectacl", "s3:putobject", false},
		{"arn:aws:s3:::b/*", "arn:aws:s3:::b/*", true},
		{"arn:aws:s3:::b/**", "arn:aws:s3:::b/*", true},
		{"arn:aws:s3:::*/*", "arn:aws:s3:::b/*", true},
		{"arn:aws:s3:::b*", "arn:aws:s3:::b/*", true},
		{"arn:aws:s3:::b*", "arn:aws:s3:::b", true},
		{"arn:aws:s3:::b/?", "arn:aws:s3:::b/*", false}, // one character, not every key
		{"arn:aws:s3:::b/a*", "arn:aws:s3:::b/*", false},
		{"arn:aws:s3:::b/*x", "arn:aws:s3:::b/*", false},
		{"arn:aws:s3:::b", "arn:aws:s3:::b/*", false},
		{"arn:aws:s3:::b/*", "arn:aws:s3:::b", false},
		{"arn:aws:s3:::bb", "arn:aws:s3:::b", false},
		{"arn:aws:s3:::b", "arn:aws:s3:::bb", false},
		{"a*b*c", "aXXbYc", true},
		{"a*b*c", "aXXbY", false},
		{"", "x", false},
		{"**", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+" covers "+tt.target, func(t *testing.T) {
			if got := covers(tt.pattern, tt.target); got != tt.want {
				t.Errorf("covers(%q, %q) = %v, want %v", tt.pattern, tt.target, got, tt.want)
			}
		})
	}
}

func TestParsePolicy(t *testing.T) {
	t.Run("strings, lists, booleans and numbers", func(t *testing.T) {
		p, err := ParsePolicy(`{"Statement": {"Sid": "one", "Effect": "Deny", "Principal": {"AWS": ["arn:aws:iam::1:root", "*"]},
			"Action": "s3:*", "Resource": ["a", "b"], "Condition": {"Bool": {"aws:SecureTransport": false}, "NumericLessThan": {"s3:TlsVersion": [1.2, "1.3"]}}}}`)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Statement) != 1 {
			t.Fatalf("%d statements, want the one object", len(p.Statement))
		}
		st := p.Statement[0]
		if !st.Principal.everyone() || strings.Join(st.Action, ",") != "s3:*" || strings.Join(st.Resource, ",") != "a,b" {
			t.Errorf("statement parsed as %+v", st)
		}
		if got := strings.Join(st.Condition["Bool"]["aws:SecureTransport"], ","); got != "false" {
			t.Errorf("boolean condition value = %q, want false", got)
		}
		if got := strings.Join(st.Condition["NumericLessThan"]["s3:TlsVersion"], ","); got != "1.2,1.3" {
			t.Errorf("numeric condition values = %q, want 1.2,1.3", got)
		}
	})
	for _, tt := range []struct{ name, doc, want string }{
		{"not JSON", `{"Statement": [`, "parsing policy"},
		{"no statements", `{"Version": "2012-10-17", "Statement": []}`, "no statements"},
		{"object as a value", `{"Statement": [{"Effect": "Deny", "Action": {"s3": "*"}}]}`, "want a string"},
		{"principal neither * nor an object", `{"Statement": [{"Effect": "Deny", "Principal": "someone"}]}`, "principal"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParsePolicy(tt.doc); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("want an error containing %q, got %v", tt.want, err)
			}
		})
	}
}

const bucket = "audit-b"

// Statements of infra.BucketPolicy("audit-b"), written by hand, to vary one thing at a time.
const (
	tlsStmt = `{"Sid": "TLS", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
		"Resource": ["arn:aws:s3:::audit-b", "arn:aws:s3:::audit-b/*"],
		"Condition": {"Bool": {"aws:SecureTransport": "false"}}}`
	headerStmt = `{"Sid": "Header", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
		"Resource": "arn:aws:s3:::audit-b/*",
		"Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}}}`
	nullStmt = `{"Sid": "Null", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
		"Resource": "arn:aws:s3:::audit-b/*",
		"Condition": {"Null": {"s3:x-amz-server-side-encryption": "true"}}}`
)

func doc(statements ...string) string {
	return `{"Version": "2012-10-17", "Statement": [` + strings.Join(statements, ",") + `]}`
}

// edit is s with old replaced by new, failing the test when old is not in s (a variant
// that silently equals the original would prove nothing).
func edit(t *testing.T, s, old, new string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("%q not in %s", old, s)
	}
	return strings.Replace(s, old, new, 1)
}

type policyCase struct {
	name   string
	policy string // "" means no policy
	want   Status
	reason string // a part of the finding's reason
}

func runPolicyCases(t *testing.T, check func(*Policy, string) Finding, rule Rule, tests []policyCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p *Policy
			if tt.policy != "" {
				var err error
				if p, err = ParsePolicy(tt.policy); err != nil {
					t.Fatal(err)
				}
			}
			f := check(p, bucket)
			if f.Rule != rule || f.Status != tt.want || !strings.Contains(f.Reason, tt.reason) {
				t.Errorf("finding %+v, want %s %s with a reason containing %q", f, rule, tt.want, tt.reason)
			}
		})
	}
}

func generated(t *testing.T) string {
	t.Helper()
	b, err := infra.BucketPolicy(bucket)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCheckSSLOnly(t *testing.T) {
	insecure := "requests without TLS to arn:aws:s3:::audit-b, arn:aws:s3:::audit-b/* are not denied"
	runPolicyCases(t, CheckSSLOnly, RuleSSLOnly, []policyCase{
		{"infra's generated policy", generated(t), Compliant, "requests without TLS denied by " + infra.SidDenyInsecureTransport},
		{"hand-written equivalent", doc(tlsStmt, headerStmt, nullStmt), Compliant, "denied by TLS"},
		{"statement as an object, not a list", `{"Statement": ` + tlsStmt + `}`, Compliant, "denied by TLS"},
		{"arrays for every element", doc(edit(t, edit(t, edit(t, tlsStmt, `"Principal": "*"`, `"Principal": {"AWS": ["*"]}`),
			`"Action": "s3:*"`, `"Action": ["s3:*"]`), `"false"`, `["false"]`)), Compliant, "denied by TLS"},
		{"principal AWS *", doc(edit(t, tlsStmt, `"Principal": "*"`, `"Principal": {"AWS": "*"}`)), Compliant, ""},
		{"action * is a superset", doc(edit(t, tlsStmt, `"s3:*"`, `"*"`)), Compliant, ""},
		{"action in other case", doc(edit(t, tlsStmt, `"s3:*"`, `"S3:*"`)), Compliant, ""},
		{"resource * is a superset", doc(edit(t, tlsStmt, `["arn:aws:s3:::audit-b", "arn:aws:s3:::audit-b/*"]`, `"*"`)), Compliant, ""},
		{"one wildcard resource for both", doc(edit(t, tlsStmt, `["arn:aws:s3:::audit-b", "arn:aws:s3:::audit-b/*"]`, `"arn:aws:s3:::audit-b*"`)), Compliant, ""},
		{"two statements, one resource each", doc(
			edit(t, tlsStmt, `["arn:aws:s3:::audit-b", "arn:aws:s3:::audit-b/*"]`, `"arn:aws:s3:::audit-b"`),
			edit(t, edit(t, tlsStmt, `["arn:aws:s3:::audit-b", "arn:aws:s3:::audit-b/*"]`, `"arn:aws:s3:::audit-b/*"`), `"TLS"`, `"TLS2"`),
		), Compliant, "denied by TLS, TLS2"},
		{"boolean condition value", doc(edit(t, tlsStmt, `"false"`, `false`)), Compliant, ""},
		{"BoolIfExists", doc(edit(t, tlsStmt, `"Bool"`, `"BoolIfExists"`)), Compliant, ""},
		{"condition key in other case", doc(edit(t, tlsStmt, `aws:SecureTransport`, `aws:securetransport`)), Compliant, ""},
		{"GovCloud partition", doc(strings.ReplaceAll(tlsStmt, "arn:aws:", "arn:aws-us-gov:")), Compliant, ""},
		{"null elements", doc(edit(t, tlsStmt, `"Sid": "TLS", `, `"Sid": "TLS", "NotPrincipal": null, "NotAction": null, "NotResource": null, `)), Compliant, "denied by TLS"},
		{"no Sid", doc(edit(t, tlsStmt, `"Sid": "TLS", `, "")), Compliant, "denied by statement 1"},
		// Denying every request to everyone denies the insecure ones too.
		{"no condition", doc(edit(t, tlsStmt, `"Condition": {"Bool": {"aws:SecureTransport": "false"}}`, `"Condition": {}`)), Compliant, ""},

		{"no policy", "", NonCompliant, "no bucket policy"},
		{"statement missing", doc(headerStmt, nullStmt), NonCompliant, insecure},
		{"effect Allow", doc(edit(t, tlsStmt, `"Deny"`, `"Allow"`)), NonCompliant, insecure + " (TLS: effect Allow, not Deny)"},
		{"principal narrower than *", doc(edit(t, tlsStmt, `"Principal": "*"`, `"Principal": {"AWS": "arn:aws:iam::123456789012:root"}`)),
			NonCompliant, `TLS: principal {"AWS":["arn:aws:iam::123456789012:root"]}, not everyone (*)`},
		{"service principal", doc(edit(t, tlsStmt, `"Principal": "*"`, `"Principal": {"Service": "*"}`)), NonCompliant, "not everyone"},
		{"no principal", doc(edit(t, tlsStmt, `"Principal": "*", `, "")), NonCompliant, "principal (none)"},
		{"NotPrincipal", doc(edit(t, tlsStmt, `"Principal": "*"`, `"NotPrincipal": {"AWS": "arn:aws:iam::1:root"}`)), NonCompliant, "NotPrincipal"},
		{"action narrower than s3:*", doc(edit(t, tlsStmt, `"s3:*"`, `["s3:GetObject", "s3:PutObject"]`)), NonCompliant,
			"actions [s3:GetObject s3:PutObject] do not include s3:*"},
		{"NotAction", doc(edit(t, tlsStmt, `"Action"`, `"NotAction"`)), NonCompliant, "NotAction"},
		{"resource lacks bucket/*", doc(edit(t, tlsStmt, `["arn:aws:s3:::audit-b", "arn:aws:s3:::audit-b/*"]`, `"arn:aws:s3:::audit-b"`)),
			NonCompliant, "requests without TLS to arn:aws:s3:::audit-b/* are not denied"},
		{"resource lacks the bucket", doc(edit(t, tlsStmt, `["arn:aws:s3:::audit-b", "arn:aws:s3:::audit-b/*"]`, `"arn:aws:s3:::audit-b/*"`)),
			NonCompliant, "requests without TLS to arn:aws:s3:::audit-b are not denied"},
		{"resource a prefix of objects only", doc(edit(t, tlsStmt, `"arn:aws:s3:::audit-b/*"`, `"arn:aws:s3:::audit-b/logs/*"`)),
			NonCompliant, "to arn:aws:s3:::audit-b/* are not denied"},
		{"another bucket", doc(strings.ReplaceAll(tlsStmt, "audit-b", "other")), NonCompliant, "cover none of"},
		{"NotResource", doc(edit(t, tlsStmt, `"Resource"`, `"NotResource"`)), NonCompliant, "NotResource"},
		{"condition true", doc(edit(t, tlsStmt, `"false"`, `"true"`)), NonCompliant,
			"condition Bool aws:SecureTransport [true] does not hold for all requests without TLS"},
		{"condition on another key", doc(edit(t, tlsStmt, `"Bool": {"aws:SecureTransport": "false"}`, `"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}`)),
			NonCompliant, insecure},
		{"an extra condition narrows it", doc(edit(t, tlsStmt, `"Bool": {"aws:SecureTransport": "false"}`,
			`"Bool": {"aws:SecureTransport": "false"}, "IpAddress": {"aws:SourceIp": "10.0.0.0/8"}`)), NonCompliant, "condition IpAddress aws:SourceIp"},
	})
}

func TestCheckDenyUnencryptedPuts(t *testing.T) {
	wrongHeader := "uploads with an SSE header other than aws:kms to arn:aws:s3:::audit-b/* are not denied"
	noHeader := "uploads without an SSE header to arn:aws:s3:::audit-b/* are not denied"
	runPolicyCases(t, CheckDenyUnencryptedPuts, RuleDenyUnencryptedPuts, []policyCase{
		{"infra's generated policy", generated(t), Compliant,
			"uploads with an SSE header other than aws:kms denied by " + infra.SidDenyIncorrectEncryptionHeader +
				"; uploads without an SSE header denied by " + infra.SidDenyUnencryptedObjectUploads},
		{"hand-written equivalent", doc(tlsStmt, headerStmt, nullStmt), Compliant, "aws:kms denied by Header; uploads without an SSE header denied by Null"},
		{"arrays for every element", doc(
			edit(t, edit(t, edit(t, headerStmt, `"s3:PutObject"`, `["s3:PutObject"]`), `"arn:aws:s3:::audit-b/*"`, `["arn:aws:s3:::audit-b/*"]`), `"aws:kms"`, `["aws:kms"]`),
			edit(t, edit(t, nullStmt, `"Principal": "*"`, `"Principal": {"AWS": "*"}`), `"true"`, `[true]`),
		), Compliant, ""},
		{"action wildcards", doc(edit(t, headerStmt, `"s3:PutObject"`, `"s3:Put*"`), edit(t, nullStmt, `"s3:PutObject"`, `["s3:GetObject", "s3:*"]`)), Compliant, ""},
		{"resource bucket*", doc(edit(t, headerStmt, `"arn:aws:s3:::audit-b/*"`, `"arn:aws:s3:::audit-b*"`), nullStmt), Compliant, ""},
		// IfExists says outright that an absent header matches too.
		{"StringNotEqualsIfExists alone", doc(edit(t, headerStmt, `"StringNotEquals"`, `"StringNotEqualsIfExists"`)), Compliant, "aws:kms denied by Header; uploads without an SSE header denied by Header"},

		{"no policy", "", NonCompliant, "no bucket policy"},
		{"both statements missing", doc(tlsStmt), NonCompliant, wrongHeader + "; " + noHeader},
		{"Null statement missing", doc(tlsStmt, headerStmt), NonCompliant, noHeader},
		{"StringNotEquals statement missing", doc(tlsStmt, nullStmt), NonCompliant, wrongHeader},
		{"header effect Allow", doc(edit(t, headerStmt, `"Deny"`, `"Allow"`), nullStmt), NonCompliant, wrongHeader + " (Header: effect Allow, not Deny"},
		{"Null principal narrower", doc(headerStmt, edit(t, nullStmt, `"Principal": "*"`, `"Principal": {"AWS": ["arn:aws:iam::1:root"]}`)),
			NonCompliant, noHeader + ` (Null: principal {"AWS":["arn:aws:iam::1:root"]}, not everyone (*))`},
		{"header allows AES256 too", doc(edit(t, headerStmt, `"aws:kms"`, `["aws:kms", "AES256"]`), nullStmt), NonCompliant,
			"condition StringNotEquals s3:x-amz-server-side-encryption [aws:kms AES256] does not hold"},
		{"header wants AES256", doc(edit(t, headerStmt, `"aws:kms"`, `"AES256"`), nullStmt), NonCompliant, wrongHeader},
		{"Null false", doc(headerStmt, edit(t, nullStmt, `"true"`, `"false"`)), NonCompliant, "condition Null s3:x-amz-server-side-encryption [false]"},
		{"action GetObject", doc(edit(t, headerStmt, `"s3:PutObject"`, `"s3:GetObject"`), nullStmt), NonCompliant, "do not include s3:putobject"},
		{"resource the bucket, not its objects", doc(headerStmt, edit(t, nullStmt, `"arn:aws:s3:::audit-b/*"`, `"arn:aws:s3:::audit-b"`)),
			NonCompliant, "Null: resources [arn:aws:s3:::audit-b] cover none of arn:aws:s3:::audit-b/*"},
	})
}
