package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sortie-fleet/sortie/pkg/audit"
	"github.com/sortie-fleet/sortie/pkg/awsx"
)

// TestAudit runs `sortie audit` on a stack as `task up` leaves it (infra up, which creates
// both buckets, then demo prepare), then with a bare bucket added.
func TestAudit(t *testing.T) {
	cloud := useCloud(t)
	prefix := "au" + strings.ToLower(randomHex(3))
	logs, secrets := prefix+"-logs", prefix+"-secrets"

	if out, err := runCLI(t, "--prefix", prefix, "infra", "up"); err != nil {
		t.Fatalf("infra up: %v\n%s", err, out)
	}
	t.Run("infra up makes both buckets compliant", func(t *testing.T) {
		out, err := runCLI(t, "--prefix", prefix, "audit")
		if err != nil {
			t.Fatalf("audit: %v\n%s", err, out)
		}
		if status(out, secrets, audit.RuleExists) == audit.Missing || !strings.HasSuffix(out, "2 buckets, 8 findings: 8 compliant, 0 non-compliant\n") {
			t.Errorf("want the log and secrets buckets compliant (infra up secures both):\n%s", out)
		}
	})

	if out, err := runCLI(t, "--prefix", prefix, "demo", "prepare", "--files", "1"); err != nil {
		t.Fatalf("demo prepare: %v\n%s", err, out)
	}
	t.Run("compliant stack", func(t *testing.T) {
		out, err := runCLI(t, "--prefix", prefix, "audit")
		if err != nil {
			t.Fatalf("audit of a fresh stack: %v\n%s", err, out)
		}
		for _, b := range []string{logs, secrets} {
			for _, rule := range audit.Rules {
				if got := status(out, b, rule); got != audit.Compliant {
					t.Errorf("%s %s is %q, want COMPLIANT:\n%s", b, rule, got, out)
				}
			}
		}
		if strings.Contains(out, "NON_COMPLIANT") || !strings.HasSuffix(out, "2 buckets, 8 findings: 8 compliant, 0 non-compliant\n") {
			t.Errorf("want every finding compliant:\n%s", out)
		}
	})

	bare := prefix + "-bare"
	cfg := awsx.ForEndpoint(cloud.URL())
	if _, err := s3.NewFromConfig(cfg, awsx.S3Options(cfg)).CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(bare)}); err != nil {
		t.Fatal(err)
	}
	t.Run("a bare bucket", func(t *testing.T) {
		out, err := runCLI(t, "--prefix", prefix, "audit", "--bucket", bare)
		if err == nil || err.Error() != "4 non-compliant findings in bucket "+bare {
			t.Fatalf("want an error counting 4 findings in %s, got %v\n%s", bare, err, out)
		}
		for _, rule := range audit.Rules {
			if got := status(out, bare, rule); got != audit.NonCompliant {
				t.Errorf("%s %s is %q, want NON_COMPLIANT:\n%s", bare, rule, got, out)
			}
		}
	})
	t.Run("json", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err := run(ctx, []string{"--prefix", prefix, "audit", "--json", "--bucket", bare, "--bucket", logs}, &stdout, &stderr)
		if err == nil {
			t.Fatal("want an error for the bare bucket")
		}
		var r struct {
			audit.Report
			NonCompliant int `json:"non_compliant"`
			Missing      int `json:"missing"`
		}
		if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
			t.Fatalf("stdout is not JSON: %v\n%s", err, stdout.String())
		}
		var names []string
		for _, b := range r.Buckets {
			names = append(names, b.Bucket)
		}
		if strings.Join(names, " ") != logs+" "+secrets+" "+bare || r.NonCompliant != 4 || r.Missing != 0 {
			t.Errorf("JSON report of buckets %v with %d non-compliant and %d missing, want [%s %s %s], 4 and 0:\n%s",
				names, r.NonCompliant, r.Missing, logs, secrets, bare, stdout.String())
		}
		if f := r.Buckets[2].Findings; len(f) != 4 || f[0].Status != audit.NonCompliant || f[0].Reason != "no bucket policy" {
			t.Errorf("bare bucket's findings %+v", f)
		}
	})
}

// status is the STATUS column of the report line about bucket and rule ("" when none).
func status(report, bucket string, rule audit.Rule) audit.Status {
	for _, line := range strings.Split(report, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == bucket && f[1] == string(rule) {
			return audit.Status(f[2])
		}
	}
	return ""
}
