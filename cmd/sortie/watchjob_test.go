package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

func TestProgressOf(t *testing.T) {
	now := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	sub := now.Add(-4 * time.Minute).Format(time.RFC3339Nano)
	tests := []struct {
		name        string
		attrs       map[string]string
		total, done int
		desc        string
	}{
		{"submitted only", map[string]string{}, 0, 0, "submitted · - instances · - left ·"},
		{"running", map[string]string{"items": "202", ledger.AttrTasksPrefix + "succeeded": "40", ledger.AttrTasksPrefix + "failed": "2",
			"instances": "i-1,i-2,i-3", "submitted_at": sub, "deadline_seconds": "600",
			"planned_at": sub, "launched_at": sub, "bootstrapped_at": sub, "watching_at": sub},
			202, 42, "watching · 3 instances · 6m0s left ·"},
		{"terminated: none alive", map[string]string{"items": "3", ledger.AttrTasksPrefix + "succeeded": "3", "instances": "i-1",
			"planned_at": sub, "terminated_at": sub}, 3, 3, "terminated · - instances · - left ·"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			total, done, desc := progressOf(ledger.Record{JobID: "j", Attrs: tt.attrs}, now)
			if total != tt.total || done != tt.done || desc != tt.desc {
				t.Errorf("progressOf = %d, %d, %q; want %d, %d, %q", total, done, desc, tt.total, tt.done, tt.desc)
			}
		})
	}
}

// TestJobPrinterPlainWhenNotATerminal: a buffer is no terminal: no progress line, and
// the outcome decides the exit status.
func TestJobPrinterPlainWhenNotATerminal(t *testing.T) {
	var b bytes.Buffer
	p := newJobPrinter(&b, false)
	if p.tty {
		t.Error("a buffer taken for a terminal")
	}
	if err := p.outcome("j", "succeeded", ""); err != nil {
		t.Errorf("success: %v", err)
	}
	for _, o := range []string{"failed", "timed_out", "cancelled", "rejected"} {
		if err := p.outcome("j", o, "why"); err == nil {
			t.Errorf("outcome %s: no error", o)
		}
	}
}

// TestExtendLeases: a hold placed after the job finished extends the leases of the job's
// running instances in the stack, and of no other job's or stack's.
func TestExtendLeases(t *testing.T) {
	st := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	mine := cloudtest.Launch(t, st.EC2, 2, cloudtest.LaunchSpec{Tags: map[string]string{tags.Stack: "s1", tags.JobID: "job-a", tags.LeaseExpires: "2026-01-01T00:00:00Z"}})
	other := cloudtest.Launch(t, st.EC2, 1, cloudtest.LaunchSpec{Tags: map[string]string{tags.Stack: "s2", tags.JobID: "job-a", tags.LeaseExpires: "2026-01-01T00:00:00Z"}})
	until := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	n, err := extendLeases(t.Context(), st.EC2, "s1", "job-a", until)
	if err != nil || n != 2 {
		t.Fatalf("extended %d (%v), want 2", n, err)
	}
	for _, in := range cloudtest.DescribeInstances(t, st.EC2, &ec2.DescribeInstancesInput{InstanceIds: []string{mine[0].ID, mine[1].ID, other[0].ID}}) {
		want := until.Format(time.RFC3339)
		if aws.ToString(in.InstanceId) == other[0].ID {
			want = "2026-01-01T00:00:00Z"
		}
		if got := cloudtest.Tags(in)[tags.LeaseExpires]; got != want {
			t.Errorf("%s lease %s, want %s", aws.ToString(in.InstanceId), got, want)
		}
	}
}
