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

var auditTime = time.Date(2026, 12, 2, 14, 0, 0, 0, time.UTC)

// sampleReport has every status and resource type, for the golden files.
func sampleReport() Report {
	var r Report
	r.add(TypeBucket, "sortie-logs", auditTime,
		Finding{RuleSSLOnly, Compliant, "requests without TLS denied by DenyInsecureTransport"},
		Finding{RuleSSEKMS, Compliant, "default encryption aws:kms with the AWS managed key aws/s3"},
		Finding{RuleDenyUnencryptedPuts, Compliant, "uploads with an SSE header other than aws:kms denied by DenyIncorrectEncryptionHeader; " +
			"uploads without an SSE header denied by DenyUnencryptedObjectUploads"},
		Finding{RulePublicAccessBlock, Compliant, "all four settings on"})
	r.add(TypeBucket, "sortie-secrets", auditTime, Finding{RuleExists, NonCompliant, "bucket does not exist"})
	r.add(TypeBucket, "scratch", auditTime,
		Finding{RuleSSLOnly, NonCompliant, "no bucket policy"},
		Finding{RuleSSEKMS, NonCompliant, "default encryption AES256 (SSE-S3), want aws:kms"},
		Finding{RuleDenyUnencryptedPuts, NonCompliant, "no bucket policy"},
		Finding{RulePublicAccessBlock, NonCompliant, "RestrictPublicBuckets off"})
	r.add(TypeTopic, "sortie-job-submitted", auditTime, Finding{RuleProducersOnly, NonCompliant, defaultPolicyReason})
	r.add(TypeRole, "sortie-planner", auditTime, Finding{RuleLeastPrivilege, NotApplicable, "role does not exist"})
	r.add(TypeSecurityGroup, "sg-0123456789abcdef0", auditTime, Finding{RuleRestrictedSSH, Compliant, "port 22 not open to 0.0.0.0/0 or ::/0"})
	r.add(TypeInstance, "i-0123456789abcdef0", auditTime, Finding{RuleIMDSv2, Compliant, "HttpTokens required, hop limit 1"})
	r.add(TypeRule, "sortie-ec2-events", auditTime, Finding{RuleEnabled, Compliant, "state ENABLED"})
	r.add(TypeQueue, "sortie-ec2-events", auditTime, Finding{RuleRuleSendsOnly, NotApplicable, "rule sortie-ec2-events does not exist"})
	return r
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
	if n := r.NonCompliant(); n != 6 {
		t.Errorf("NonCompliant() = %d, want 6", n)
	}
	if n := r.Count(NotApplicable); n != 2 {
		t.Errorf("Count(NotApplicable) = %d, want 2", n)
	}
	want := []string{"bucket sortie-secrets", "bucket scratch", "topic sortie-job-submitted"}
	if got := r.NonCompliantResources(); !slices.Equal(got, want) {
		t.Errorf("NonCompliantResources() = %v, want %v", got, want)
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
	// The fields of AWS Config's Evaluation, by their AWS names.
	var raw struct {
		Evaluations []map[string]any
	}
	if err := json.Unmarshal(b, &raw); err != nil || len(raw.Evaluations) != len(r.Evaluations) {
		t.Fatalf("JSON %s: %v", b, err)
	}
	for _, k := range []string{"ComplianceType", "ComplianceResourceType", "ComplianceResourceId", "Annotation", "OrderingTimestamp"} {
		if _, ok := raw.Evaluations[0][k]; !ok {
			t.Errorf("evaluation lacks %s: %v", k, raw.Evaluations[0])
		}
	}

	empty, err := json.Marshal(Report{})
	if err != nil || string(empty) != `{"Evaluations":[]}` {
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
			_, err := Audit(context.Background(), Clients{S3: failingS3{on: call}}, Target{Topology: bus.Topology{Prefix: "t"}})
			if err == nil || !strings.Contains(err.Error(), "auditing bucket t-logs") || !strings.Contains(err.Error(), "AccessDenied") {
				t.Fatalf("want an error naming t-logs and AccessDenied, got %v", err)
			}
		})
	}
	t.Run("a policy that does not parse is a finding", func(t *testing.T) {
		r, err := Audit(context.Background(), Clients{S3: failingS3{}}, Target{Topology: bus.Topology{Prefix: "t"}})
		if err != nil {
			t.Fatal(err)
		}
		f := r.Findings(TypeBucket, "t-logs")
		if f[RuleSSLOnly].Status != NonCompliant || !strings.Contains(f[RuleSSLOnly].Reason, "no statements") || f[RuleDenyUnencryptedPuts].Reason != f[RuleSSLOnly].Reason {
			t.Errorf("findings %+v, want the policy rules non-compliant for an empty policy", f)
		}
	})
	t.Run("empty name", func(t *testing.T) {
		if _, err := Audit(context.Background(), Clients{S3: failingS3{}}, Target{Topology: bus.Topology{Prefix: "t"}, Buckets: []string{""}}); err == nil {
			t.Fatal("want an error for an empty bucket name")
		}
	})
}

func findings(t *testing.T, r Report, bucket string) map[Rule]Finding {
	t.Helper()
	f := r.Findings(TypeBucket, bucket)
	if len(f) == 0 {
		t.Fatalf("bucket %s not in the report:\n%s", bucket, r)
	}
	return f
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

	s3only := Clients{S3: NewClients(cfg).S3}
	r, err := Audit(ctx, s3only, Target{Topology: topo, Buckets: []string{topo.BucketName(), bare, aes, weak, missing, bare}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", r)
	if got := len(r.NonCompliantResources()); got != 4 {
		t.Errorf("%d non-compliant buckets in the report, want 4 (bare once):\n%s", got, r)
	}

	t.Run("log and secrets buckets after infra up", func(t *testing.T) {
		allCompliant(t, r, topo.BucketName())
		allCompliant(t, r, topo.SecretsBucketName())
	})
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
		if len(got) != 1 || got[RuleExists] != (Finding{RuleExists, NonCompliant, "bucket does not exist"}) {
			t.Errorf("findings %+v, want one NON_COMPLIANT exists", got)
		}
	})
	if n := r.NonCompliant(); n != 4+4+1+1 {
		t.Errorf("NonCompliant() = %d, want 10:\n%s", n, r)
	}
	want := []string{"bucket " + bare, "bucket " + aes, "bucket " + weak, "bucket " + missing}
	if got := r.NonCompliantResources(); !slices.Equal(got, want) {
		t.Errorf("NonCompliantResources() = %v, want %v", got, want)
	}

	t.Run("SecureBucket makes the bare bucket compliant", func(t *testing.T) {
		if _, err := infra.SecureBucket(ctx, s3c, "", bare, ""); err != nil {
			t.Fatal(err)
		}
		r, err := Audit(ctx, s3only, Target{Topology: topo, Buckets: []string{bare}})
		if err != nil {
			t.Fatal(err)
		}
		allCompliant(t, r, bare)
		if r.NonCompliant() != 0 {
			t.Errorf("NonCompliant() = %d after SecureBucket:\n%s", r.NonCompliant(), r)
		}
	})
}
