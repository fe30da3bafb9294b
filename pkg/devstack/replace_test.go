package devstack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/tags"
	"github.com/sortie-fleet/sortie/services/reaper"
)

// TestLostInstancesReplaced: the one instance of a fleet goes away mid-job — a spot
// interruption (the local cloud sends EC2's two-minute warning, here a few seconds, through
// the stack's EventBridge rule and queue, then terminates it), or an on-demand instance
// terminated by someone else (EC2's state-change notices). The planner plans a replacement
// (plan revision 2, its own ClientToken), the replacement does the work and the job
// succeeds within its deadline. A warned instance's logs are archived while it still runs.
func TestLostInstancesReplaced(t *testing.T) {
	e := startE2EOpts(t, localcloud.SSHEmbedded, 0, func(ops *opsconfig.Config) {
		one := ops.Templates["demo"]
		one.MaxInstances = 1
		ops.Templates["demo-one"] = one
		one.Spot = &opsconfig.Spot{Fallback: []string{opsconfig.FallbackOnDemand}}
		ops.Templates["demo-spot"] = one
		// gated-worker: the demo worker, started once the test opens a gate shared by the
		// job's instances (their directories are siblings; the gate is named after the
		// job's work queue), so the lost instance cannot finish the work before it goes.
		r := ops.Recipes["demo-worker"]
		r.Steps = slices.Clone(r.Steps)
		r.Steps[len(r.Steps)-1] = opsconfig.Step{Name: "worker", Start: &opsconfig.Start{
			Argv: []string{"sh", "-c", `while [ ! -e "../gate-$2" ]; do echo "waiting for the gate"; sleep 0.2; done; exec sortie-worker --bucket "$1" --queue "$2"`, "sh", "{{bucket}}", "{{queue}}"},
			Log:  ".sortie/worker/worker.log",
		}}
		ops.Recipes["gated-worker"] = r
	})
	t.Run("spot interruption: archived within the notice, replaced", func(t *testing.T) {
		e.runLost(t, "demo-spot", events.LostSpotInterruption, func(id string) error { return e.Cloud.InterruptSpot(id, 4*time.Second) })
	})
	t.Run("on-demand instance terminated by someone else: replaced", func(t *testing.T) {
		e.runLost(t, "demo-one", events.LostTerminated, e.Cloud.LoseInstance)
	})
}

// runLost runs a gated demo job of 20 items on template's one instance, takes the instance
// away with lose once it is bootstrapped, opens the gate once the replacement is up (and the
// first instance gone), and checks the job's events and record.
func (e *e2e) runLost(t *testing.T, template, cause string, lose func(id string) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := SeedDemo(ctx, e.S3, e.SQS, cloudtest.Unique("rpl"), 20)
	if err != nil {
		t.Fatal(err)
	}
	jobID := cloudtest.Unique("job-lost")
	job := DemoJob(d, jobID, "corr-"+jobID, time.Now())
	job.Template, job.Recipe, job.DeadlineSeconds = template, "gated-worker", 60
	if err := e.Publisher.Publish(ctx, job); err != nil {
		t.Fatal(err)
	}
	spot := cause == events.LostSpotInterruption

	var (
		plans    []events.FleetPlanned
		launches []events.FleetLaunched
		lost     []events.InstanceLost
		finished *events.JobFinished
		term     *events.FleetTerminated
		first    string
	)
	for term == nil {
		ev, err := e.w.Next(ctx)
		if err != nil {
			t.Fatalf("following %s: %v (services: %v)", jobID, err, e.Err())
		}
		if id, _ := ev.IDs(); id != jobID {
			continue
		}
		switch ev := ev.(type) {
		case events.FleetPlanned:
			plans = append(plans, ev)
		case events.FleetLaunched:
			launches = append(launches, ev)
		case events.FleetBootstrapped:
			if ev.Revision() == 1 {
				first = ev.Instances[0].ID // its workload waits at the gate: take it away
				if err := lose(first); err != nil {
					t.Fatal(err)
				}
				continue
			}
			// The replacement is up. Once the first instance is gone (and, warned, its logs
			// are in S3), the gate opens.
			cloudtest.Eventually(t, 30*time.Second, func() error {
				if !terminated(e.instances(jobID), first) {
					return fmt.Errorf("%s not terminated yet", first)
				}
				return nil
			})
			if spot {
				key := reaper.ArchiveKey(jobID, first)
				if _, err := e.S3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(e.Topology.BucketName()), Key: aws.String(key)}); err != nil {
					t.Fatalf("the interrupted instance is gone and its logs are not archived: %v", err)
				}
			}
			gate := filepath.Join(filepath.Dir(e.Cloud.InstanceDir(first)), "gate-"+d.Queue)
			if err := os.WriteFile(gate, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		case events.InstanceLost:
			lost = append(lost, ev)
		case events.JobFinished:
			finished = &ev
		case events.FleetTerminated:
			term = &ev
		}
	}

	if len(plans) != 2 || plans[1].PlanRevision != 2 || plans[1].Count != 1 || plans[1].Items != 20 ||
		!strings.Contains(plans[1].Rationale, "replan 2 after "+first+" was lost ("+cause+")") {
		t.Fatalf("plans %+v, want the first and a replacement of revision 2 for the 20 items left", plans)
	}
	if len(lost) != 1 || lost[0].InstanceID != first || lost[0].Cause != cause || lost[0].NoticeDeadline.IsZero() != !spot {
		t.Errorf("InstanceLost %+v, want one %s of %s", lost, cause, first)
	}
	if len(launches) != 2 || launches[1].PlanRevision != 2 || len(launches[1].Instances) != 1 || launches[1].Instances[0].ID == first {
		t.Fatalf("launches %+v, want a replacement instance of revision 2", launches)
	}
	second := launches[1].Instances[0].ID
	if wantMarket := map[bool]string{true: events.MarketSpot, false: events.MarketOnDemand}[spot]; launches[1].Instances[0].Market != wantMarket {
		t.Errorf("replacement market %q, want %s", launches[1].Instances[0].Market, wantMarket)
	}
	for _, in := range e.instances(jobID) {
		want := map[string]string{first: "1", second: "2"}[aws.ToString(in.InstanceId)]
		if got := tags.Map(in.Tags)[tags.PlanRevision]; got != want {
			t.Errorf("%s: %s=%q, want %q", aws.ToString(in.InstanceId), tags.PlanRevision, got, want)
		}
	}
	if finished == nil || finished.Outcome != events.OutcomeSucceeded || finished.TasksSucceeded != 20 {
		t.Fatalf("JobFinished %+v, want success with the 20 tasks", finished)
	}
	if deadline := job.Time.Add(job.Deadline()); finished.Time.After(deadline) {
		t.Errorf("finished at %s, after the deadline %s", finished.Time, deadline)
	}
	if !strings.Contains(finished.Reason, first+" ("+cause+", replaced by revision 2)") {
		t.Errorf("reason %q does not name the lost instance and its replacement", finished.Reason)
	}
	// A warned instance's archive holds its log, read over SSH on the warning (the
	// instance was gone before the job finished: FleetTerminated found that archive). An
	// instance gone without a warning has nothing to archive, and FleetTerminated says so.
	var archived, failed []string
	for _, a := range term.Archives {
		archived = append(archived, a.InstanceID)
		if a.InstanceID == first {
			files := e.archive(a)
			if !strings.Contains(files[".sortie/worker/worker.log"], "waiting for the gate") {
				t.Errorf("the interrupted instance's archive holds no worker log: %v", keys(files))
			}
		}
	}
	for _, f := range term.ArchiveFailures {
		failed = append(failed, f.InstanceID)
	}
	slices.Sort(archived)
	wantArchived, wantFailed := sorted(first, second), []string(nil)
	if !spot {
		wantArchived, wantFailed = []string{second}, []string{first}
	}
	if !slices.Equal(archived, wantArchived) || !slices.Equal(failed, wantFailed) {
		t.Errorf("archives of %v, failures %v; want %v and %v", archived, failed, wantArchived, wantFailed)
	}
	rec, err := e.Ledger.Get(ctx, jobID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.PlanRevision() != 2 || rec.LostBy(first) != "2" || rec.RevisionState(2) != ledger.RevBootstrapped {
		t.Errorf("ledger: revision %d, %s lost by %q, revision 2 %q", rec.PlanRevision(), first, rec.LostBy(first), rec.RevisionState(2))
	}
}

func terminated(insts []ec2types.Instance, id string) bool {
	for _, in := range insts {
		if aws.ToString(in.InstanceId) == id {
			return in.State != nil && in.State.Name == ec2types.InstanceStateNameTerminated
		}
	}
	return false
}

func sorted(s ...string) []string { slices.Sort(s); return s }

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
