package devstack

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/metrics"
)

// TestChaos is the chaos run (`task chaos`): three replicas of every service, N concurrent
// demo jobs (SORTIE_CHAOS_JOBS, default 12; the long form is 50) with their own work
// queues of 5 items, the JobSubmitted of one job in five published three times at the
// same moment, and handlers crashing at random after their claim and before their publish
// (a 15% chance at each checkpoint, at most once per job and stage). Every job must end
// once — one fleet, one event per stage — with its task totals exact in JobFinished and
// in CloudWatch, and nothing leaked.
func TestChaos(t *testing.T) {
	jobsN := 12
	if v := os.Getenv("SORTIE_CHAOS_JOBS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 200 {
			t.Fatalf("SORTIE_CHAOS_JOBS=%q: want 1-200", v)
		}
		jobsN = n
	}
	const items, copies = 5, 3
	var kills atomic.Int32
	var crashed sync.Map // "job/stage" → true
	o := startOnce(t, "chaos", 3, func(job string, stage ledger.Stage) bool {
		if rand.Float64() >= 0.15 {
			return false
		}
		if _, again := crashed.LoadOrStore(job+"/"+string(stage), true); again {
			return false
		}
		kills.Add(1)
		return true
	}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	run := cloudtest.Unique("")
	var jobs []events.JobSubmitted
	for i := range jobsN {
		d, err := SeedDemo(ctx, o.S3, o.SQS, fmt.Sprintf("ch%d%s", i, run[:6]), items)
		if err != nil {
			t.Fatal(err)
		}
		j := DemoJob(d, fmt.Sprintf("chaos%02d-%s", i, run), "corr-chaos", time.Now())
		j.DeadlineSeconds = 60
		jobs = append(jobs, j)
	}
	ta, followErr := o.follow(ctx, nil)
	start := time.Now()
	var wg sync.WaitGroup
	submissions := 0
	for i, j := range jobs {
		n := 1
		if i%5 == 0 {
			n = copies
		}
		submissions += n
		for range n {
			wg.Go(func() {
				if err := o.Publisher.Publish(ctx, j); err != nil {
					t.Errorf("publishing %s: %v", j.JobID, err)
				}
			})
		}
	}
	wg.Wait()
	var ids []string
	for _, j := range jobs {
		ids = append(ids, j.JobID)
	}
	o.settle(ta, ids, followErr, 6*time.Minute)
	wall := time.Since(start)

	lost, duplicated := 0, 0
	for _, id := range ids {
		for _, typ := range []string{events.TypeFleetPlanned, events.TypeFleetLaunched, events.TypeFleetBootstrapped, events.TypeJobFinished, events.TypeFleetTerminated} {
			switch n := ta.count(id, typ); {
			case n == 0:
				lost++
				t.Errorf("job %s: no %s", id, typ)
			case n > 1:
				duplicated += n - 1
				t.Errorf("job %s: %d %s, want 1", id, n, typ)
			}
		}
		ta.mu.Lock()
		for _, ev := range ta.seen[id] {
			if jf, ok := ev.(events.JobFinished); ok && (jf.Outcome != events.OutcomeSucceeded || jf.TasksSucceeded != items || jf.TasksFailed != 0) {
				t.Errorf("job %s: JobFinished %s with %d/%d tasks (%s), want succeeded with %d/0", id, jf.Outcome, jf.TasksSucceeded, jf.TasksFailed, jf.Reason, items)
			}
		}
		ta.mu.Unlock()
		totals, err := metrics.JobTotals(ctx, o.CW, id, start.Add(-time.Minute), time.Now().Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if totals.Succeeded != items || totals.Failed != 0 {
			t.Errorf("job %s: CloudWatch totals %+v, want %d succeeded", id, totals, items)
		}
	}
	out, err := o.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
	if err != nil {
		t.Fatal(err)
	}
	instances, leaked := 0, 0
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			instances++
			if in.State.Name != ec2types.InstanceStateNameTerminated {
				leaked++
			}
		}
	}
	if leaked > 0 {
		t.Errorf("%d instances not terminated", leaked)
	}
	t.Logf("chaos: %d jobs (%d submissions), 3 replicas of every service, %d kills after a claim; lost %d, duplicated %d, leaked %d of %d instances; wall time %s",
		jobsN, submissions, kills.Load(), lost, duplicated, leaked, instances, wall.Round(time.Second))
}
