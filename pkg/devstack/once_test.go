package devstack

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
)

// onceStack is a stack of several replicas per service with short visibility timeouts and
// leases, so that a crashed handler's message comes back within seconds.
type onceStack struct {
	*Stack
	t testing.TB
}

func startOnce(t testing.TB, prefix string, replicas int, fault func(string, ledger.Stage) bool, ops *opsconfig.Config) *onceStack {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: starts the whole stack")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := Start(ctx, Options{
		Prefix:            prefix,
		Ops:               cmp.Or(ops, e2eOps(t)),
		WorkerCommand:     []string{"/usr/bin/env", workerEnv + "=1", exe},
		Replicas:          replicas,
		VisibilityTimeout: 6 * time.Second,
		Lease:             3 * time.Second,
		Fault:             fault,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("closing the stack: %v", err)
		}
	})
	return &onceStack{Stack: st, t: t}
}

// tally counts every event of the stack per job and type.
type tally struct {
	mu     sync.Mutex
	counts map[string]map[string]int // job → event type → count
	seen   map[string][]events.Event // job → events in order
}

func (ta *tally) count(job, typ string) int {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	return ta.counts[job][typ]
}

// follow counts the stack's events until ctx ends; onEvent sees each one first.
func (o *onceStack) follow(ctx context.Context, onEvent func(events.Event)) (*tally, <-chan error) {
	o.t.Helper()
	w, err := o.Watch(ctx)
	if err != nil {
		o.t.Fatal(err)
	}
	ta := &tally{counts: map[string]map[string]int{}, seen: map[string][]events.Event{}}
	done := make(chan error, 1)
	go func() {
		defer w.Close(context.Background())
		for {
			ev, err := w.Next(ctx)
			if ctx.Err() != nil {
				done <- nil
				return
			}
			if err != nil {
				done <- err
				return
			}
			if ev == nil {
				continue
			}
			if onEvent != nil {
				onEvent(ev)
			}
			job, _ := ev.IDs()
			ta.mu.Lock()
			if ta.counts[job] == nil {
				ta.counts[job] = map[string]int{}
			}
			ta.counts[job][ev.EventType()]++
			ta.seen[job] = append(ta.seen[job], ev)
			ta.mu.Unlock()
		}
	}()
	return ta, done
}

// settle waits until every job has its FleetTerminated and the ledger holds no claim on
// any of them, then for a further visibility timeout and a half, in which a late duplicate
// would show.
func (o *onceStack) settle(ta *tally, jobs []string, followErr <-chan error, timeout time.Duration) {
	o.t.Helper()
	deadline := time.Now().Add(timeout)
	cloudtest.Eventually(o.t, timeout, func() error {
		select {
		case err := <-followErr:
			o.t.Fatalf("watching the stack: %v", err)
		default:
		}
		var waiting []string
		for _, j := range jobs {
			if ta.count(j, events.TypeFleetTerminated) == 0 {
				waiting = append(waiting, j)
			}
		}
		if len(waiting) > 0 {
			return fmt.Errorf("no FleetTerminated yet for %v", waiting)
		}
		return nil
	})
	cloudtest.Eventually(o.t, time.Until(deadline)+30*time.Second, func() error {
		for _, j := range jobs {
			rec, err := o.Ledger.Get(context.Background(), j)
			if err != nil {
				return err
			}
			for k := range rec.Attrs {
				if strings.HasSuffix(k, "_holder") {
					return fmt.Errorf("job %s: %s still held", j, k)
				}
			}
			if rec.DoneAt(ledger.Terminated) == "" && rec.DoneAt(ledger.Rejected) == "" {
				return fmt.Errorf("job %s: neither terminated nor rejected in the ledger (%s)", j, rec.State())
			}
		}
		return nil
	})
	time.Sleep(9 * time.Second) // visibility timeout × 1.5: a redelivery would have happened
}

// checkOnce asserts one event of each stage per job, one fleet per job, all terminated.
func (o *onceStack) checkOnce(t *testing.T, ta *tally, job string, extraBootstrapped int) {
	t.Helper()
	want := map[string]int{
		events.TypeFleetPlanned: 1, events.TypeFleetLaunched: 1, events.TypeFleetBootstrapped: 1 + extraBootstrapped,
		events.TypeJobFinished: 1, events.TypeFleetTerminated: 1,
	}
	for typ, n := range want {
		if got := ta.count(job, typ); got != n {
			t.Errorf("job %s: %d %s, want %d", job, got, typ, n)
		}
	}
	ta.mu.Lock()
	var launched *events.FleetLaunched
	var terminated *events.FleetTerminated
	for _, ev := range ta.seen[job] {
		switch e := ev.(type) {
		case events.FleetLaunched:
			launched = &e
		case events.FleetTerminated:
			terminated = &e
		}
	}
	ta.mu.Unlock()
	if launched == nil || terminated == nil {
		t.Fatalf("job %s: no FleetLaunched or FleetTerminated", job)
	}
	if terminated.Outcome != events.OutcomeSucceeded {
		t.Errorf("job %s: outcome %s (%s), want succeeded", job, terminated.Outcome, terminated.Reason)
	}
	insts := cloudtest.DescribeInstances(t, o.EC2, &ec2.DescribeInstancesInput{
		Filters: []ec2types.Filter{{Name: aws.String("tag:sortie:job-id"), Values: []string{job}}},
	})
	if len(insts) != len(launched.Instances) {
		t.Errorf("job %s: %d instances tagged, FleetLaunched lists %d: more than one fleet", job, len(insts), len(launched.Instances))
	}
	for _, in := range insts {
		if in.State.Name != ec2types.InstanceStateNameTerminated {
			t.Errorf("job %s: instance %s is %s, want terminated", job, aws.ToString(in.InstanceId), in.State.Name)
		}
	}
	rec, err := o.Ledger.Get(context.Background(), job)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ledger.Stages {
		if rec.DoneAt(s) == "" {
			t.Errorf("job %s: stage %s not done in the ledger: %v", job, s, rec.Attrs)
		}
	}
}

func quickJob(id string) events.JobSubmitted {
	return events.JobSubmitted{Header: events.NewHeader(id, "corr-"+id, time.Now()),
		Template: "demo", Profile: "demo-fast", Recipe: "quick", Work: events.WorkSource{Count: 20}, DeadlineSeconds: 60}
}

// TestDuplicatesEndOnce: three replicas of every service; each job's JobSubmitted is
// published five times at the same moment and its FleetBootstrapped three more times as
// soon as it appears: one fleet, one FleetPlanned, FleetLaunched, JobFinished and
// FleetTerminated per job.
func TestDuplicatesEndOnce(t *testing.T) {
	o := startOnce(t, "dup", 3, nil, nil)
	run := cloudtest.Unique("-")
	var jobs []string
	for i := range 4 {
		jobs = append(jobs, fmt.Sprintf("dup%d%s", i, run))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var republished sync.WaitGroup
	var once sync.Map
	ta, followErr := o.follow(ctx, func(ev events.Event) {
		if fb, ok := ev.(events.FleetBootstrapped); ok {
			if _, again := once.LoadOrStore(fb.JobID, true); !again {
				for range 3 {
					republished.Go(func() {
						if err := o.Publisher.Publish(context.Background(), fb); err != nil {
							t.Errorf("republishing FleetBootstrapped: %v", err)
						}
					})
				}
			}
		}
	})
	start := time.Now()
	var wg sync.WaitGroup
	for _, j := range jobs {
		job := quickJob(j)
		for range 5 {
			wg.Go(func() {
				if err := o.Publisher.Publish(ctx, job); err != nil {
					t.Errorf("publishing: %v", err)
				}
			})
		}
	}
	wg.Wait()
	o.settle(ta, jobs, followErr, 3*time.Minute)
	republished.Wait()
	for _, j := range jobs {
		o.checkOnce(t, ta, j, 3) // our own three republishes of its FleetBootstrapped are seen as well
	}
	t.Logf("%d jobs × 5 submissions on 3 replicas: ended once each in %s", len(jobs), time.Since(start).Round(time.Second))
}

// TestCrashAfterClaimEndsOnce: for each stage in turn, one job whose handler at that stage
// dies after winning its claim and before publishing (the ledger's fault hook: the claim is
// abandoned unreleased, the message left unacknowledged as a killed process leaves them).
// Every job still ends, and exactly once.
func TestCrashAfterClaimEndsOnce(t *testing.T) {
	run := cloudtest.Unique("-")
	crashAt := map[string]ledger.Stage{}
	var jobs []string
	for _, s := range ledger.Stages {
		j := "crash-" + string(s) + run
		jobs = append(jobs, j)
		crashAt[j] = s
	}
	var fired sync.Map
	var crashes atomic.Int32
	o := startOnce(t, "crash", 2, func(job string, stage ledger.Stage) bool {
		if crashAt[job] != stage {
			return false
		}
		if _, again := fired.LoadOrStore(job, true); again {
			return false
		}
		crashes.Add(1)
		return true
	}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ta, followErr := o.follow(ctx, nil)
	start := time.Now()
	for _, j := range jobs {
		if err := o.Publisher.Publish(ctx, quickJob(j)); err != nil {
			t.Fatal(err)
		}
	}
	o.settle(ta, jobs, followErr, 4*time.Minute)
	if int(crashes.Load()) != len(jobs) {
		var missing []string
		for _, j := range jobs {
			if _, ok := fired.Load(j); !ok {
				missing = append(missing, j)
			}
		}
		sort.Strings(missing)
		t.Errorf("%d crashes simulated, want %d (none for %v)", crashes.Load(), len(jobs), missing)
	}
	for _, j := range jobs {
		o.checkOnce(t, ta, j, 0)
	}
	if err := o.Err(); err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("services: %v", err)
	}
	t.Logf("%d jobs, one crash each at a different stage: each ended once in %s", len(jobs), time.Since(start).Round(time.Second))
}

// TestCapsNeverExceeded: 20 jobs of 3 instances each want 3× the stack's cap of 20, on 3
// provisioner replicas: the instances not terminated never exceed the cap (DescribeInstances
// sampled all along), every job ends once, and a job that could not get capacity in time
// is rejected with that reason.
func TestCapsNeverExceeded(t *testing.T) {
	const capInstances, jobsN, perJob = 20, 20, 3
	ops := e2eOps(t)
	tmpl := ops.Templates["demo"]
	tmpl.MinInstances, tmpl.MaxInstances = perJob, perJob
	ops.Templates["capped"] = tmpl
	ops.Caps = opsconfig.Caps{MaxInstances: capInstances, Templates: map[string]int{"capped": capInstances}}
	if err := ops.Validate(); err != nil {
		t.Fatal(err)
	}
	o := startOnce(t, "caps", 3, nil, ops)
	run := cloudtest.Unique("-")
	var jobs []string
	for i := range jobsN {
		jobs = append(jobs, fmt.Sprintf("cap%02d%s", i, run))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ta, followErr := o.follow(ctx, nil)

	// Sample the instances that are not terminated, continuously, until the jobs settle.
	var peak, samples atomic.Int32
	sampling, stopSampling := context.WithCancel(context.Background())
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sampling.Err() == nil {
			out, err := o.EC2.DescribeInstances(sampling, &ec2.DescribeInstancesInput{})
			if err == nil {
				live := int32(0)
				for _, r := range out.Reservations {
					for _, in := range r.Instances {
						if in.State.Name != ec2types.InstanceStateNameTerminated {
							live++
						}
					}
				}
				samples.Add(1)
				if live > peak.Load() {
					peak.Store(live)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	start := time.Now()
	for _, j := range jobs {
		job := quickJob(j)
		job.Template, job.DeadlineSeconds = "capped", 15
		if err := o.Publisher.Publish(ctx, job); err != nil {
			t.Fatal(err)
		}
	}
	o.settle(ta, jobs, followErr, 4*time.Minute)
	stopSampling()
	<-sampled

	if peak.Load() > capInstances || samples.Load() < 50 {
		t.Errorf("peak %d instances not terminated over %d samples, want at most %d (and enough samples)", peak.Load(), samples.Load(), capInstances)
	}
	succeeded, rejected := 0, 0
	for _, j := range jobs {
		if n := ta.count(j, events.TypeFleetTerminated); n != 1 {
			t.Errorf("job %s: %d FleetTerminated, want 1", j, n)
		}
		ta.mu.Lock()
		for _, ev := range ta.seen[j] {
			ft, ok := ev.(events.FleetTerminated)
			if !ok {
				continue
			}
			switch {
			case ft.Outcome == events.OutcomeSucceeded:
				succeeded++
			case ft.Outcome == events.OutcomeRejected && strings.Contains(ft.Reason, "no capacity within its deadline"):
				rejected++
			default:
				t.Errorf("job %s ended %s: %s", j, ft.Outcome, ft.Reason)
			}
		}
		ta.mu.Unlock()
	}
	if succeeded < capInstances/perJob {
		t.Errorf("%d jobs succeeded, want at least the %d that fit at once", succeeded, capInstances/perJob)
	}
	if inst, _, _, err := o.Ledger.InUse(context.Background()); err != nil || inst != 0 {
		t.Errorf("%d instances still reserved after every job ended (%v), want 0", inst, err)
	}
	t.Logf("%d jobs × %d instances, cap %d, 3 replicas: %d succeeded, %d rejected for want of capacity; peak %d live instances over %d samples; %s",
		jobsN, perJob, capInstances, succeeded, rejected, peak.Load(), samples.Load(), time.Since(start).Round(time.Second))
}
