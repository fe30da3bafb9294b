package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/fleetview"
)

// runInstance launches one instance with the tags, as an operator (or a bug) might by hand.
func runInstance(t *testing.T, client *ec2.Client, tags map[string]string) string {
	t.Helper()
	var tt []ec2types.Tag
	for k, v := range tags {
		tt = append(tt, ec2types.Tag{Key: aws.String(k), Value: aws.String(v)})
	}
	out, err := client.RunInstances(t.Context(), &ec2.RunInstancesInput{
		ImageId: aws.String(cloudtest.Image), InstanceType: ec2types.InstanceTypeT3Micro,
		MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: tt}},
	})
	if err != nil {
		t.Fatalf("RunInstances: %v", err)
	}
	return aws.ToString(out.Instances[0].InstanceId)
}

// statusJSON runs `sortie status --json` with args and decodes its jobs.
func statusJSON(t *testing.T, args ...string) []fleetview.Job {
	t.Helper()
	out, err := runCLI(t, append([]string{"status", "--json"}, args...)...)
	if err != nil {
		t.Fatalf("status --json %v: %v\n%s", args, err, out)
	}
	var jobs []fleetview.Job
	if err := json.Unmarshal([]byte(out), &jobs); err != nil {
		t.Fatalf("status --json output does not parse: %v\n%s", err, out)
	}
	return jobs
}

// TestStatusShowsLeaks runs `sortie status` against a local cloud without a reaper, so a
// hand-launched instance whose lease has expired stays there to be seen.
func TestStatusShowsLeaks(t *testing.T) {
	cloud := useCloud(t)
	client := ec2.NewFromConfig(awsx.ForEndpoint(cloud.URL()))
	// kumo's buckets outlive a test's cloud (-count): each run names its own stacks.
	prefix, other := "st"+strings.ToLower(randomHex(3)), "ot"+strings.ToLower(randomHex(3))

	out, err := runCLI(t, "--prefix", prefix, "status")
	if err == nil || !strings.Contains(err.Error(), `no Sortie stack "`+prefix+`"`) {
		t.Fatalf("status without a stack = %q, %v; want no Sortie stack", out, err)
	}
	if out, err := runCLI(t, "--prefix", prefix, "infra", "up"); err != nil {
		t.Fatalf("infra up: %v\n%s", err, out)
	}
	out, err = runCLI(t, "--prefix", prefix, "status")
	if err != nil || strings.TrimSpace(out) != "no Sortie instances" {
		t.Fatalf("status on an empty stack = %q, %v; want %q", out, err, "no Sortie instances")
	}

	stack := map[string]string{"sortie:stack": prefix}
	with := func(m map[string]string) map[string]string { maps.Copy(m, stack); return m }
	expired := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	runInstance(t, client, map[string]string{"Name": "not-sortie"}) // untagged: never listed
	// Sortie's tags but no stack, or another stack's: never listed (but by that stack's prefix).
	runInstance(t, client, map[string]string{"sortie:job-id": "nostack-1", "sortie:lease-expires": expired})
	runInstance(t, client, map[string]string{"sortie:stack": other, "sortie:job-id": "other-1", "sortie:lease-expires": expired})
	leak := runInstance(t, client, with(map[string]string{"sortie:job-id": "leak-1", "sortie:lease-expires": expired}))
	runInstance(t, client, with(map[string]string{"sortie:job-id": "live-1", "sortie:fleet": "live-1", "sortie:template": "demo",
		"sortie:stage": "bootstrapped", "sortie:lease-expires": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}))
	gone := runInstance(t, client, with(map[string]string{"sortie:job-id": "gone-1", "sortie:lease-expires": expired}))
	if _, err := client.TerminateInstances(t.Context(), &ec2.TerminateInstancesInput{InstanceIds: []string{gone}}); err != nil {
		t.Fatal(err)
	}
	cloudtest.Eventually(t, 30*time.Second, func() error {
		jobs := statusJSON(t, "--prefix", prefix, "--all", "gone-1")
		if len(jobs) != 1 || jobs[0].States["terminated"] != 1 {
			return fmt.Errorf("gone-1 not terminated yet: %+v", jobs)
		}
		return nil
	})

	t.Run("table", func(t *testing.T) {
		out, err := runCLI(t, "--prefix", prefix, "status")
		if err != nil {
			t.Fatalf("status: %v\n%s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 || !strings.HasPrefix(lines[0], "JOB ") {
			t.Fatalf("want a header and 2 rows (leak-1, live-1), got:\n%s", out)
		}
		if !strings.HasPrefix(lines[1], "leak-1 ") || !strings.Contains(lines[1], "EXPIRED") {
			t.Errorf("leak-1 row does not say EXPIRED:\n%s", out)
		}
		if !strings.HasPrefix(lines[2], "live-1 ") || strings.Contains(lines[2], "EXPIRED") || !strings.Contains(lines[2], "bootstrapped") {
			t.Errorf("live-1 row wrong:\n%s", out)
		}
		// Aligned: every row's LEASE column starts where the header's does.
		col := strings.Index(lines[0], "LEASE")
		for _, l := range lines[1:] {
			if len(l) <= col || l[col-1] != ' ' || l[col] == ' ' {
				t.Errorf("row not aligned with LEASE at %d: %q", col, l)
			}
		}
	})

	t.Run("json", func(t *testing.T) {
		jobs := statusJSON(t, "--prefix", prefix, "leak-1")
		if len(jobs) != 1 || jobs[0].JobID != "leak-1" || !jobs[0].Expired ||
			len(jobs[0].Instances) != 1 || jobs[0].Instances[0].ID != leak || !jobs[0].Instances[0].Expired {
			t.Fatalf("leak-1 = %+v, want it expired with instance %s", jobs, leak)
		}
		if jobs[0].Instances[0].SSHEndpoint == "" && jobs[0].Instances[0].State == "running" {
			t.Errorf("running instance without the local cloud's ssh endpoint: %+v", jobs[0].Instances[0])
		}
	})

	t.Run("--prefix: that stack's instances only", func(t *testing.T) {
		if out, err := runCLI(t, "--prefix", other, "infra", "up"); err != nil {
			t.Fatalf("infra up: %v\n%s", err, out)
		}
		out, err := runCLI(t, "--prefix", other, "status", "--json")
		if err != nil {
			t.Fatalf("status: %v\n%s", err, out)
		}
		var jobs []fleetview.Job
		if err := json.Unmarshal([]byte(out), &jobs); err != nil {
			t.Fatal(err)
		}
		if len(jobs) != 1 || jobs[0].JobID != "other-1" {
			t.Fatalf("status --prefix other = %+v, want other-1 only", jobs)
		}
		for _, j := range statusJSON(t, "--prefix", prefix, "--all") {
			if j.JobID == "other-1" || j.JobID == "nostack-1" {
				t.Errorf("status of stack sortie lists %s, not its own", j.JobID)
			}
		}
	})

	t.Run("terminated only with --all", func(t *testing.T) {
		if out, err := runCLI(t, "--prefix", prefix, "status", "gone-1"); err != nil || strings.TrimSpace(out) != "no Sortie instances" {
			t.Errorf("status gone-1 = %q, %v; want no instances", out, err)
		}
		jobs := statusJSON(t, "--prefix", prefix, "--all", "gone-1")
		if len(jobs) != 1 || jobs[0].Expired || jobs[0].States["terminated"] != 1 {
			t.Errorf("status --all gone-1 = %+v: want 1 terminated, not expired", jobs)
		}
	})
}
