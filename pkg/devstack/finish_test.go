package devstack

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/recipe"
)

// finish is what one instance of a job saw between its workload's exit and its end.
type finish struct {
	instance   string
	exited     time.Time // the workload's exit: when its wrapper wrote the exit code
	finished   time.Time // JobFinished's time (the monitor's verdict)
	terminated time.Time // when EC2 first described the instance as no longer running
}

// runNap submits a job of the nap recipe sized to 3 instances and follows it to its
// terminated fleet, polling EC2 every 20 ms for each instance's end.
func runNap(t testing.TB, e *e2e, jobID string) ([]finish, []events.TaskReported) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	job := events.JobSubmitted{Header: events.NewHeader(jobID, "corr-"+jobID, time.Now()),
		Template: "demo", Profile: "demo-fast", Recipe: "nap", Work: events.WorkSource{Count: 202}, DeadlineSeconds: 20}
	if err := e.Publisher.Publish(ctx, job); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for ids == nil {
		ev, err := e.w.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for the fleet: %v", err)
		}
		if fl, ok := ev.(events.FleetLaunched); ok && fl.JobID == jobID {
			for _, in := range fl.Instances {
				ids = append(ids, in.ID)
			}
		}
	}
	ended := map[string]time.Time{}
	for len(ended) < len(ids) {
		out, err := e.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: ids})
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		for _, r := range out.Reservations {
			for _, in := range r.Instances {
				id := aws.ToString(in.InstanceId)
				if _, seen := ended[id]; !seen && in.State != nil && in.State.Name != ec2types.InstanceStateNameRunning && in.State.Name != ec2types.InstanceStateNamePending {
					ended[id] = now
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("instances %v still running (ended: %v)", ids, ended)
		case <-time.After(20 * time.Millisecond):
		}
	}
	var finished time.Time
	var exits []events.TaskReported
	for done := false; !done; {
		ev, err := e.w.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for FleetTerminated: %v", err)
		}
		if id, _ := ev.IDs(); id != jobID {
			continue
		}
		switch ev := ev.(type) {
		case events.TaskReported:
			if ev.Exited() {
				exits = append(exits, ev)
			}
		case events.JobFinished:
			if ev.Outcome != events.OutcomeSucceeded {
				t.Fatalf("job %s: %s (%s)", jobID, ev.Outcome, ev.Reason)
			}
			finished = ev.Time
		case events.FleetTerminated:
			done = true
		}
	}
	var out []finish
	for _, id := range ids {
		fi, err := os.Stat(filepath.Join(e.Cloud.InstanceDir(id), recipe.ExitCodePath("nap")))
		if err != nil {
			t.Fatalf("%s: the workload's exit code: %v", id, err)
		}
		out = append(out, finish{instance: id, exited: fi.ModTime(), finished: finished, terminated: ended[id]})
	}
	return out, exits
}

// TestExitReportFinishesTheJob: with the production check interval (30 s), a fleet whose
// workloads exit after a second is finished and terminated within seconds: each
// workload's wrapper reports its exit and the monitor checks the fleet at once instead of
// waiting for its next check (which would come 30 s after the bootstrap).
func TestExitReportFinishesTheJob(t *testing.T) {
	e := startE2EInterval(t, 30*time.Second)
	fs, exits := runNap(t, e, "finish-fast-"+randomHex(3))
	if len(fs) != 3 {
		t.Fatalf("%d instances, want 3", len(fs))
	}
	for _, f := range fs {
		if d := f.terminated.Sub(f.exited); d > 15*time.Second {
			t.Errorf("%s: terminated %v after its workload exited: the exit report was not acted on", f.instance, d)
		}
	}
	var reported []string
	for _, x := range exits {
		if x.TaskID != "nap" || x.ExitCode == nil || *x.ExitCode != 0 || x.Outcome != events.OutcomeSucceeded {
			t.Errorf("exit report %+v", x)
		}
		reported = append(reported, x.InstanceID)
	}
	slices.Sort(reported)
	var ids []string
	for _, f := range fs {
		ids = append(ids, f.instance)
	}
	slices.Sort(ids)
	if !slices.Equal(reported, ids) {
		t.Errorf("exit reports from %v, want one from each of %v", reported, ids)
	}
}

// BenchmarkExitToTerminated measures on the whole in-process stack, with the production
// check interval (30 s, so only the exit reports make it fast), the time from each
// workload's exit to the monitor's JobFinished and to its instance no longer running
// (after the reaper archived its logs to S3): 10 jobs of 3 instances, one after another.
//
//	go test -run '^$' -bench ExitToTerminated -benchtime 1x ./pkg/devstack
func BenchmarkExitToTerminated(b *testing.B) {
	const jobs = 10
	e := startE2EInterval(b, 30*time.Second)
	var toFinished, toTerminated []time.Duration
	b.ResetTimer()
	for i := range b.N * jobs {
		fs, _ := runNap(b, e, fmt.Sprintf("bench-exit-%s-%d", randomHex(2), i))
		for _, f := range fs {
			toFinished = append(toFinished, f.finished.Sub(f.exited))
			toTerminated = append(toTerminated, f.terminated.Sub(f.exited))
		}
	}
	b.StopTimer()
	for _, m := range []struct {
		name string
		d    []time.Duration
	}{{"finished", toFinished}, {"terminated", toTerminated}} {
		slices.Sort(m.d)
		b.ReportMetric(float64(m.d[len(m.d)/2].Milliseconds()), "ms-p50-"+m.name)
		b.ReportMetric(float64(m.d[len(m.d)*9/10].Milliseconds()), "ms-p90-"+m.name)
		b.ReportMetric(float64(m.d[len(m.d)-1].Milliseconds()), "ms-max-"+m.name)
	}
	b.ReportMetric(0, "ns/op")
}
