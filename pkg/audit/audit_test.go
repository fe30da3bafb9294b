package audit

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/infra"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestCheckEncryption(t *testing.T) {
	byDefault := func(alg s3types.ServerSideEncryption, key string) *s3types.ServerSideEncryptionConfiguration {
		d := &s3types.ServerSideEncryptionByDefault{SSEAlgorithm: alg}
		if key != "" {
			d.KMSMasterKeyID = aws.String(key)
		}
		return &s3types.ServerSideEncryptionConfiguration{Rules: []s3types.ServerSideEncryptionRule{{ApplyServerSideEncryptionByDefault: d}}}
	}
	tests := []struct {
		name   string
		cfg    *s3types.ServerSideEncryptionConfiguration
		want   Status
		reason string
	}{
		{"aws:kms, managed key", byDefault(s3types.ServerSideEncryptionAwsKms, ""), Compliant, "default encryption aws:kms with the AWS managed key aws/s3"},
		{"aws:kms, own key", byDefault(s3types.ServerSideEncryptionAwsKms, "alias/sortie-logs"), Compliant, "default encryption aws:kms with alias/sortie-logs"},
		{"none", nil, NonCompliant, "no default encryption"},
		{"no rules", &s3types.ServerSideEncryptionConfiguration{}, NonCompliant, "no default encryption"},
		{"a rule without a default", &s3types.ServerSideEncryptionConfiguration{Rules: []s3types.ServerSideEncryptionRule{{BucketKeyEnabled: aws.Bool(true)}}}, NonCompliant, "no default encryption"},
		{"SSE-S3", byDefault(s3types.ServerSideEncryptionAes256, ""), NonCompliant, "default encryption AES256 (SSE-S3), want aws:kms"},
		{"DSSE-KMS", byDefault(s3types.ServerSideEncryptionAwsKmsDsse, ""), NonCompliant, "default encryption aws:kms:dsse, want aws:kms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if f := CheckEncryption(tt.cfg); f != (Finding{RuleSSEKMS, tt.want, tt.reason}) {
				t.Errorf("finding %+v, want %s %q", f, tt.want, tt.reason)
			}
		})
	}
}

func TestCheckPublicAccessBlock(t *testing.T) {
	on, off := aws.Bool(true), aws.Bool(false)
	tests := []struct {
		name   string
		cfg    *s3types.PublicAccessBlockConfiguration
		want   Status
		reason string
	}{
		{"all on", &s3types.PublicAccessBlockConfiguration{BlockPublicAcls: on, IgnorePublicAcls: on, BlockPublicPolicy: on, RestrictPublicBuckets: on}, Compliant, "all four settings on"},
		{"none", nil, NonCompliant, "no public access block"},
		{"two off or unset", &s3types.PublicAccessBlockConfiguration{BlockPublicAcls: on, IgnorePublicAcls: off, BlockPublicPolicy: on}, NonCompliant, "IgnorePublicAcls, RestrictPublicBuckets off"},
		{"all unset", &s3types.PublicAccessBlockConfiguration{}, NonCompliant, "BlockPublicAcls, IgnorePublicAcls, BlockPublicPolicy, RestrictPublicBuckets off"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if f := CheckPublicAccessBlock(tt.cfg); f != (Finding{RulePublicAccessBlock, tt.want, tt.reason}) {
				t.Errorf("finding %+v, want %s %q", f, tt.want, tt.reason)
			}
		})
	}
}

// sampleReport has every status and a multi-bucket layout, for the golden files.
func sampleReport() Report {
	return Report{Buckets: []BucketReport{
		{Bucket: "sortie-logs", Findings: []Finding{
			{RuleSSLOnly, Compliant, "requests without TLS denied by DenyInsecureTransport"},
			{RuleSSEKMS, Compliant, "default encryption aws:kms with the AWS managed key aws/s3"},
			{RuleDenyUnencryptedPuts, Compliant, "uploads with an SSE header other than aws:kms denied by DenyIncorrectEncryptionHeader; " +
				"uploads without an SSE header denied by DenyUnencryptedObjectUploads"},
			{RulePublicAccessBlock, Compliant, "all four settings on"},
		}},
		{Bucket: "sortie-secrets", Findings: []Finding{{RuleExists, Missing, "bucket does not exist"}}},
		{Bucket: "scratch", Findings: []Finding{
			{RuleSSLOnly, NonCompliant, "no bucket policy"},
			{RuleSSEKMS, NonCompliant, "default encryption AES256 (SSE-S3), want aws:kms"},
			{RuleDenyUnencryptedPuts, NonCompliant, "no bucket policy"},
			{RulePublicAccessBlock, NonCompliant, "RestrictPublicBuckets off"},
		}},
	}}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs (go test -update rewrites it):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestReportGolden(t *testing.T) {
	r := sampleReport()
	if n := r.NonCompliant(); n != 4 {
		t.Errorf("NonCompliant() = %d, want 4", n)
	}
	if n := r.Missing(); n != 1 {
		t.Errorf("Missing() = %d, want 1", n)
	}
	if got := r.NonCompliantBuckets(); !slices.Equal(got, []string{"scratch"}) {
		t.Errorf("NonCompliantBuckets() = %v, want [scratch]", got)
	}
	golden(t, "report.golden.txt", []byte(r.String()))

	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "report.golden.json", append(b, '\n'))
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.String() != r.String() {
		t.Errorf("JSON round trip changed the report:\n%s", back)
	}

	empty, err := json.Marshal(Report{})
	if err != nil || string(empty) != `{"buckets":[],"non_compliant":0,"missing":0}` {
		t.Errorf("empty report as JSON = %s, %v", empty, err)
	}
}

// failingS3 answers HeadBucket, or one of the Get calls, with an error that is neither
// "missing" nor "unset".
type failingS3 struct {
	S3API
	on string
}

func (f failingS3) fail(call string) error {
	if f.on == call {
		return &smithy.GenericAPIError{Code: "AccessDenied", Message: "Access Denied"}
	}
	return nil
}

func (f failingS3) HeadBucket(context.Context, *s3.HeadBucketInput, ...func(*s3.Options)) (*s3.HeadBucketOutput, error) {
	return &s3.HeadBucketOutput{}, f.fail("HeadBucket")
}

func (f failingS3) GetBucketPolicy(context.Context, *s3.GetBucketPolicyInput, ...func(*s3.Options)) (*s3.GetBucketPolicyOutput, error) {
	return &s3.GetBucketPolicyOutput{Policy: aws.String(`{"Statement": []}`)}, f.fail("GetBucketPolicy")
}

func (f failingS3) GetBucketEncryption(context.Context, *s3.GetBucketEncryptionInput, ...func(*s3.Options)) (*s3.GetBucketEncryptionOutput, error) {
	return &s3.GetBucketEncryptionOutput{}, f.fail("GetBucketEncryption")
}

func (f failingS3) GetPublicAccessBlock(context.Context, *s3.GetPublicAccessBlockInput, ...func(*s3.Options)) (*s3.GetPublicAccessBlockOutput, error) {
	return &s3.GetPublicAccessBlockOutput{}, f.fail("GetPublicAccessBlock")
}

var _ S3API = failingS3{}

// TestAuditFailsWhenABucketCannotBeRead: access denied (or any error but "missing" and
// "unset") makes the audit fail, naming the bucket and the call, rather than pass a bucket
// it could not see.
func TestAuditFailsWhenABucketCannotBeRead(t *testing.T) {
	for _, call := range []string{"HeadBucket", "GetBucketPolicy", "GetBucketEncryption", "GetPublicAccessBlock"} {
		t.Run(call, func(t *testing.T) {
			_, err := Audit(context.Background(), Clients{S3: failingS3{on: call}}, []string{"b1"})
			if err == nil || !strings.Contains(err.Error(), "auditing bucket b1") || !strings.Contains(err.Error(), "AccessDenied") {
				t.Fatalf("want an error naming b1 and AccessDenied, got %v", err)
			}
		})
	}
	t.Run("a policy that does not parse is a finding", func(t *testing.T) {
		r, err := Audit(context.Background(), Clients{S3: failingS3{}}, []string{"b1"})
		if err != nil {
			t.Fatal(err)
		}
		f := r.Buckets[0].Findings
		if f[0].Status != NonCompliant || !strings.Contains(f[0].Reason, "no statements") || f[2].Reason != f[0].Reason {
			t.Errorf("findings %+v, want the policy rules non-compliant for an empty policy", f)
		}
	})
	t.Run("empty name", func(t *testing.T) {
		if _, err := Audit(context.Background(), Clients{S3: failingS3{}}, []string{""}); err == nil {
			t.Fatal("want an error for an empty bucket name")
		}
	})
}

func findings(t *testing.T, r Report, bucket string) map[Rule]Finding {
	t.Helper()
	for _, b := range r.Buckets {
		if b.Bucket == bucket {
			out := make(map[Rule]Finding)
			for _, f := range b.Findings {
				out[f.Rule] = f
			}
			return out
		}
	}
	t.Fatalf("bucket %s not in the report:\n%s", bucket, r)
	return nil
}

func allCompliant(t *testing.T, r Report, bucket string) {
	t.Helper()
	got := findings(t, r, bucket)
	for _, rule := range Rules {
		if got[rule].Status != Compliant {
			t.Errorf("%s %s: %+v, want COMPLIANT", bucket, rule, got[rule])
		}
	}
}

// TestAuditOnLocalCloud audits buckets as infra up leaves them, bare, with SSE-S3, with a
// policy lacking a statement, and missing; then SecureBucket makes the bare one compliant.
func TestAuditOnLocalCloud(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := awsx.ForEndpoint(cloudtest.NewCloud(t, localcloud.Options{}).URL())
	s3c := s3.NewFromConfig(cfg, awsx.S3Options(cfg))
	topo := bus.Topology{Prefix: cloudtest.Unique("au")}
	if _, err := infra.Up(ctx, infra.NewClients(cfg), topo); err != nil {
		t.Fatal(err)
	}
	bare, aes, weak, missing := topo.Prefix+"-bare", topo.Prefix+"-aes", topo.Prefix+"-weak", topo.Prefix+"-missing"
	for _, b := range []string{bare, aes, weak} {
		if _, err := s3c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(b)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s3c.PutBucketEncryption(ctx, &s3.PutBucketEncryptionInput{Bucket: aws.String(aes),
		ServerSideEncryptionConfiguration: &s3types.ServerSideEncryptionConfiguration{Rules: []s3types.ServerSideEncryptionRule{{
			ApplyServerSideEncryptionByDefault: &s3types.ServerSideEncryptionByDefault{SSEAlgorithm: s3types.ServerSideEncryptionAes256},
		}}}}); err != nil {
		t.Fatal(err)
	}
	// weak: secured by SecureBucket, then its policy replaced by one without the Null statement.
	if _, err := infra.SecureBucket(ctx, s3c, "", weak, ""); err != nil {
		t.Fatal(err)
	}
	var p map[string]any
	full, err := infra.BucketPolicy(weak)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(full, &p); err != nil {
		t.Fatal(err)
	}
	p["Statement"] = p["Statement"].([]any)[:2]
	partial, _ := json.Marshal(p)
	if _, err := s3c.PutBucketPolicy(ctx, &s3.PutBucketPolicyInput{Bucket: aws.String(weak), Policy: aws.String(string(partial))}); err != nil {
		t.Fatal(err)
	}

	r, err := Audit(ctx, NewClients(cfg), []string{topo.BucketName(), bare, aes, weak, missing, bare})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", r)
	if got := len(r.Buckets); got != 5 {
		t.Errorf("%d buckets in the report, want 5 (bare once)", got)
	}

	t.Run("log bucket after infra up", func(t *testing.T) { allCompliant(t, r, topo.BucketName()) })
	t.Run("bare bucket", func(t *testing.T) {
		got := findings(t, r, bare)
		for rule, reason := range map[Rule]string{
			RuleSSLOnly: "no bucket policy", RuleSSEKMS: "no default encryption",
			RuleDenyUnencryptedPuts: "no bucket policy", RulePublicAccessBlock: "no public access block",
		} {
			if got[rule] != (Finding{rule, NonCompliant, reason}) {
				t.Errorf("%s: %+v, want NON_COMPLIANT %q", rule, got[rule], reason)
			}
		}
	})
	t.Run("SSE-S3 bucket", func(t *testing.T) {
		if f := findings(t, r, aes)[RuleSSEKMS]; f.Status != NonCompliant || !strings.Contains(f.Reason, "AES256") {
			t.Errorf("sse-kms: %+v, want NON_COMPLIANT naming AES256", f)
		}
	})
	t.Run("policy without the Null statement", func(t *testing.T) {
		got := findings(t, r, weak)
		want := "uploads without an SSE header to arn:aws:s3:::" + weak + "/* are not denied"
		if f := got[RuleDenyUnencryptedPuts]; f.Status != NonCompliant || f.Reason != want {
			t.Errorf("deny-unencrypted-puts: %+v, want NON_COMPLIANT %q", f, want)
		}
		for _, rule := range []Rule{RuleSSLOnly, RuleSSEKMS, RulePublicAccessBlock} {
			if got[rule].Status != Compliant {
				t.Errorf("%s: %+v, want COMPLIANT", rule, got[rule])
			}
		}
	})
	t.Run("missing bucket", func(t *testing.T) {
		got := findings(t, r, missing)
		if len(got) != 1 || got[RuleExists] != (Finding{RuleExists, Missing, "bucket does not exist"}) {
			t.Errorf("findings %+v, want one MISSING", got)
		}
	})
	if n, m := r.NonCompliant(), r.Missing(); n != 4+4+1 || m != 1 {
		t.Errorf("NonCompliant() = %d, Missing() = %d, want 9 and 1", n, m)
	}
	if got := r.NonCompliantBuckets(); !slices.Equal(got, []string{bare, aes, weak}) {
		t.Errorf("NonCompliantBuckets() = %v, want [%s %s %s]", got, bare, aes, weak)
	}

	t.Run("SecureBucket makes the bare bucket compliant", func(t *testing.T) {
		if _, err := infra.SecureBucket(ctx, s3c, "", bare, ""); err != nil {
			t.Fatal(err)
		}
		r, err := Audit(ctx, NewClients(cfg), []string{bare})
		if err != nil {
			t.Fatal(err)
		}
		allCompliant(t, r, bare)
		if r.NonCompliant() != 0 {
			t.Errorf("NonCompliant() = %d after SecureBucket:\n%s", r.NonCompliant(), r)
		}
	})
}
