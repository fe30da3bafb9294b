package monitor

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/metrics"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/tags"
	"github.com/sortie-fleet/sortie/pkg/verify"
)

// cloud is one local cloud shared by a test's scenarios, with a key pair to log in with
// and a fleet host key handed to instances through cloud-init.
type cloud struct {
	lc      *localcloud.Cloud
	cfg     aws.Config
	ec2     *ec2.Client
	ops     *opsconfig.Config
	key     cloudtest.KeyPair
	hostKey cloudtest.HostKey
	// consoleKeys: the instances make their own host keys; start reads them from the console.
	consoleKeys bool
}

func newCloud(t *testing.T) *cloud {
	t.Helper()
	lc := cloudtest.NewCloud(t, localcloud.Options{BootDelay: 10 * time.Millisecond, ShutdownDelay: 10 * time.Millisecond})
	c := &cloud{lc: lc, cfg: awsx.ForEndpoint(lc.URL()), ops: cloudtest.LoadOps(t, "testdata/ops.yaml"), hostKey: cloudtest.NewHostKey(t)}
	c.ec2 = ec2.NewFromConfig(c.cfg)
	c.key = cloudtest.NewKeyPair(t, c.ec2, cloudtest.Unique("monitor-test-"))
	return c
}

// launch starts n instances of a fleet of the stack with the fleet host key, an expired
// lease tag and the key pair, and returns them with their SSH endpoints.
func (s *stack) launch(t *testing.T, fleet string, n int) []events.InstanceResult {
	t.Helper()
	return s.c.launchTagged(t, n, s.c.hostKey.UserData, map[string]string{
		tags.Stack: s.Topology.Prefix, tags.Fleet: fleet, tags.LeaseExpires: "2000-01-01T00:00:00Z",
	})
}

// launchTagged starts n instances with the user data and exactly these tags.
func (c *cloud) launchTagged(t *testing.T, n int, userData string, tg map[string]string) []events.InstanceResult {
	t.Helper()
	insts := cloudtest.Launch(t, c.ec2, n, cloudtest.LaunchSpec{
		InstanceType: ec2types.InstanceTypeM3Medium,
		KeyName:      c.key.Name,
		UserData:     userData,
		Tags:         tg,
	})
	var res []events.InstanceResult
	for _, in := range insts {
		res = append(res, events.InstanceResult{ID: in.ID, SSHEndpoint: in.SSHEndpoint, OK: true,
			Steps: []events.StepResult{{Name: "work", ExitCode: 0, DurationMS: 3}}})
	}
	return res
}

// tg returns every instance's tg.
func (c *cloud) instanceTags(t *testing.T, ids []string) map[string]map[string]string {
	t.Helper()
	m := map[string]map[string]string{}
	for _, in := range cloudtest.DescribeInstances(t, c.ec2, &ec2.DescribeInstancesInput{InstanceIds: ids}) {
		m[aws.ToString(in.InstanceId)] = cloudtest.Tags(in)
	}
	return m
}

// start runs the lines recipe's steps on an instance over SSH, as the bootstrapper would.
func (c *cloud) start(t *testing.T, in events.InstanceResult, params map[string]string) {
	t.Helper()
	c.startRecipe(t, in, "lines", params)
}

// startRecipe runs a recipe's steps on an instance over SSH, as the bootstrapper would.
func (c *cloud) startRecipe(t *testing.T, in events.InstanceResult, name string, params map[string]string) {
	t.Helper()
	r, err := c.ops.Recipe(name)
	if err != nil {
		t.Fatal(err)
	}
	steps, err := recipe.Render(r, params, recipe.RenderEnv{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hostKey := c.hostKey.Public
	if c.consoleKeys {
		k, err := verify.ConsoleHostKey(ctx, c.ec2, in.ID, verify.ConsolePoll{First: 10 * time.Millisecond, Max: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		hostKey = k
	}
	conn, err := remote.Dial(ctx, remote.DialConfig{Addr: in.SSHEndpoint, User: "sortie", Signer: c.key.Signer, HostKey: hostKey})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, s := range steps {
		res, err := conn.Run(ctx, s.Command, bytes.NewReader(s.Stdin))
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("step %s on %s: %v, exit %d: %s", s.Name, in.ID, err, res.ExitCode, res.Stderr)
		}
	}
}

// stack is one scenario's Sortie stack (its own prefix) with a monitor running on it.
type stack struct {
	*cloudtest.Stack
	t       *testing.T
	c       *cloud
	results string // URL of the test queue subscribed to JobFinished
}

// newStack creates a stack and runs a monitor on it with fast timers; tune adjusts the
// monitor's configuration.
func (c *cloud) newStack(t *testing.T, tune func(*Config)) *stack {
	t.Helper()
	s := &stack{Stack: cloudtest.NewStack(t, c.lc), t: t, c: c}
	s.results = s.Subscribe(t, bus.JobFinished)
	cfg := Config{
		Base:         service.Base{Prefix: s.Topology.Prefix, LocalMode: true},
		SSHKey:       c.key.Path,
		Interval:     300 * time.Millisecond, // timers round up: checks every second
		Grace:        time.Minute,
		Lease:        time.Minute,
		MaxMisses:    5,
		SSHTimeout:   5 * time.Second,
		MetricsFlush: 200 * time.Millisecond,
		Settle:       400 * time.Millisecond,
		PollWait:     time.Second,
	}
	if tune != nil {
		tune(&cfg)
	}
	s.Serve(t, func(ctx context.Context) error {
		return Run(ctx, cfg, s.Deps(c.ops))
	})
	return s
}

// bootstrapped returns the FleetBootstrapped of a job on instances.
func (s *stack) bootstrapped(job string, deadline time.Time, instances []events.InstanceResult) events.FleetBootstrapped {
	return events.FleetBootstrapped{
		Header:     events.NewHeader(job, "corr-"+job, time.Now()),
		FleetID:    job,
		Template:   "test",
		Recipe:     "lines",
		DeadlineAt: deadline.UTC().Truncate(time.Second),
		HostKey:    s.c.hostKey.Authorized,
		KeyName:    s.c.key.Name,
		Instances:  instances,
	}
}

// jobFinished waits for the JobFinished of a job on the test queue.
func (s *stack) jobFinished(job string, timeout time.Duration) events.JobFinished {
	s.t.Helper()
	return cloudtest.NextEvent(s.t, s.SQS, s.results, job, timeout, events.DecodeJobFinished)
}

// noMore fails if another JobFinished arrives within d.
func (s *stack) noMore(d time.Duration) {
	s.t.Helper()
	out, err := s.SQS.ReceiveMessage(context.Background(), &sqs.ReceiveMessageInput{QueueUrl: aws.String(s.results), MaxNumberOfMessages: 10, WaitTimeSeconds: int32(d / time.Second)})
	if err != nil {
		s.t.Fatal(err)
	}
	if len(out.Messages) > 0 {
		s.t.Errorf("a second JobFinished: %s", aws.ToString(out.Messages[0].Body))
	}
}

// dlqsEmpty fails if any of the monitor's DLQs holds a message, visible or not.
func (s *stack) dlqsEmpty() {
	s.t.Helper()
	for _, q := range s.Topology.ServiceQueues(bus.Monitor) {
		dlq := bus.DLQName(q)
		if n := cloudtest.QueueDepth(s.t, s.SQS, dlq); n != 0 {
			for id, ms := range cloudtest.DeadLetters(s.t, s.SQS, dlq, time.Second) {
				for _, m := range ms {
					s.t.Errorf("DLQ of %s holds %q of %s (reason %s)", q, m.Body, id, m.Reason)
				}
			}
			s.t.Errorf("DLQ of %s holds %d messages", q, n)
		}
	}
}

func (s *stack) taskReported(job, fleet, instance, outcome string, i int) events.TaskReported {
	return events.TaskReported{Header: events.NewHeader(job, "corr-"+job, time.Now()), FleetID: fleet, InstanceID: instance,
		TaskID: fmt.Sprintf("in/file-%03d", i), Outcome: outcome, DurationMS: int64(10 + i)}
}

func ids(in []events.InstanceResult) []string {
	out := make([]string, len(in))
	for i, r := range in {
		out[i] = r.ID
	}
	return out
}

// checkListsFleet fails unless jf lists every instance with its endpoint and how to log in.
func checkListsFleet(t *testing.T, jf events.JobFinished, c *cloud, fleet []events.InstanceResult) {
	t.Helper()
	if len(jf.Instances) != len(fleet) {
		t.Fatalf("JobFinished lists %d instances, want %d", len(jf.Instances), len(fleet))
	}
	for i, in := range fleet {
		if jf.Instances[i] != (events.InstanceRef{ID: in.ID, SSHEndpoint: in.SSHEndpoint}) {
			t.Errorf("instance %d: %+v, want %s at %s", i, jf.Instances[i], in.ID, in.SSHEndpoint)
		}
	}
	if jf.HostKey != c.hostKey.Authorized || jf.KeyName != c.key.Name || jf.Template != "test" {
		t.Errorf("JobFinished host key %q key name %q template %q", jf.HostKey, jf.KeyName, jf.Template)
	}
}

// TestMonitor runs the monitor against the local cloud: real instances reached over SSH
// with the pinned host key, real queues, timers, EC2 tg and CloudWatch metrics.
func TestMonitor(t *testing.T) {
	t.Parallel()
	c := newCloud(t)

	// Every workload exits 0 while tasks are reported, some after the fleet is
	// bootstrapped: succeeded, with the task totals from CloudWatch.
	t.Run("succeeded with task totals", func(t *testing.T) {
		t.Parallel()
		s := c.newStack(t, nil)
		job := cloudtest.Unique("job-ok-")
		fleet := s.launch(t, job, 2)
		for _, in := range fleet {
			c.start(t, in, map[string]string{"lines": "5"})
		}
		const succeeded, failed = 9, 3
		n := 0
		report := func(count int, outcome string) {
			for range count {
				s.Publish(t, s.taskReported(job, job, fleet[n%2].ID, outcome, n))
				n++
			}
		}
		report(5, events.OutcomeSucceeded)
		report(2, events.OutcomeFailed)
		// The metrics reach CloudWatch on their own, batched.
		cw := metrics.NewClient(c.cfg)
		cloudtest.Eventually(t, 5*time.Second, func() error {
			got, err := metrics.JobTotals(context.Background(), cw, job, time.Now().Add(-time.Hour), time.Now().Add(time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			if got != (metrics.Totals{Succeeded: 5, Failed: 2}) {
				return fmt.Errorf("CloudWatch totals %+v, want 5 succeeded, 2 failed", got)
			}
			return nil
		})

		s.Publish(t, s.bootstrapped(job, time.Now().Add(time.Hour), fleet))
		report(succeeded-5, events.OutcomeSucceeded)
		report(failed-2, events.OutcomeFailed)

		jf := s.jobFinished(job, 20*time.Second)
		if jf.Outcome != events.OutcomeSucceeded || jf.FailingInstance != "" || jf.LogTail != nil || jf.JobID != job || jf.CorrelationID != "corr-"+job {
			t.Errorf("JobFinished %+v, want succeeded", jf)
		}
		if jf.TasksSucceeded != succeeded || jf.TasksFailed != failed {
			t.Errorf("JobFinished counts %d succeeded, %d failed; want %d, %d", jf.TasksSucceeded, jf.TasksFailed, succeeded, failed)
		}
		checkListsFleet(t, jf, c, fleet)
		// The stage tag is written right after JobFinished is published (so a failed
		// publish is retried, never lost behind a "finished" tag): poll for it.
		cloudtest.Eventually(t, 5*time.Second, func() error {
			for id, tg := range c.instanceTags(t, ids(fleet)) {
				if tg[tags.Stage] != StageFinished {
					return fmt.Errorf("%s has stage %q, want %q", id, tg[tags.Stage], StageFinished)
				}
			}
			return nil
		})
		// A duplicate FleetBootstrapped after the verdict: its check sees the finished
		// stage and stops, so no second JobFinished.
		s.Publish(t, s.bootstrapped(job, time.Now().Add(time.Hour), fleet))
		s.noMore(4 * time.Second)
		s.dlqsEmpty()
	})

	// A workload whose log stops growing fails the job at its stall window, long before the
	// deadline, with its log tail; one that keeps writing is not stalled.
	t.Run("stalled workload fails at the stall window with the tail", func(t *testing.T) {
		t.Parallel()
		s := c.newStack(t, nil)
		job := cloudtest.Unique("job-stall-")
		fleet := s.launch(t, job, 2)
		c.startRecipe(t, fleet[0], "stall", map[string]string{"lines": "60", "every": "0.5", "hang": "600"}) // 30 s of output
		c.startRecipe(t, fleet[1], "stall", map[string]string{"lines": "7", "hang": "600"})                  // 7 lines, then silence
		e := s.bootstrapped(job, time.Now().Add(time.Hour), fleet)
		e.Recipe = "stall"
		start := time.Now()
		s.Publish(t, e)

		jf := s.jobFinished(job, 30*time.Second)
		took := time.Since(start)
		if jf.Outcome != events.OutcomeFailed || jf.FailingInstance != fleet[1].ID {
			t.Fatalf("JobFinished %s failing %s (%s), want failed on the silent %s", jf.Outcome, jf.FailingInstance, jf.Reason, fleet[1].ID)
		}
		if want := "workload work on " + fleet[1].ID + " made no progress: its log logs/work.log stayed at "; !strings.HasPrefix(jf.Reason, want) ||
			!strings.Contains(jf.Reason, "(stall window 3s)") {
			t.Errorf("reason %q, want it to start %q and name the window", jf.Reason, want)
		}
		want := []string{"line 1", "line 2", "line 3", "line 4", "line 5", "line 6", "line 7"}
		if !slices.Equal(jf.LogTail, want) {
			t.Errorf("log tail %q, want %q", jf.LogTail, want)
		}
		// Stalled for 3 s, seen at checks about a second apart: well before the 30 s the
		// busy instance writes for, and the hour-long deadline.
		if took > 25*time.Second {
			t.Errorf("took %s to catch the stall", took)
		}
	})

	// Tasks reported, then none: the job fails at the stall window of its tasks signal.
	t.Run("no task reported for the stall window fails the job", func(t *testing.T) {
		t.Parallel()
		s := c.newStack(t, nil)
		job := cloudtest.Unique("job-quiet-")
		fleet := s.launch(t, job, 1)
		c.startRecipe(t, fleet[0], "quiet", nil)
		e := s.bootstrapped(job, time.Now().Add(time.Hour), fleet)
		e.Recipe = "quiet"
		s.Publish(t, e)
		// Four tasks over 2 s (less than the window between two of them), then silence.
		for i := range 4 {
			s.Publish(t, s.taskReported(job, job, fleet[0].ID, events.OutcomeSucceeded, i))
			time.Sleep(500 * time.Millisecond)
		}
		stopped := time.Now()

		jf := s.jobFinished(job, 30*time.Second)
		if jf.Outcome != events.OutcomeFailed || jf.FailingInstance != fleet[0].ID ||
			!strings.HasPrefix(jf.Reason, "workload count made no progress: the job's reported tasks stayed at ") ||
			!strings.HasSuffix(jf.Reason, "(stall window 3s); running on "+fleet[0].ID) {
			t.Fatalf("JobFinished %s failing %s: %q; want failed for want of tasks", jf.Outcome, jf.FailingInstance, jf.Reason)
		}
		if !slices.Equal(jf.LogTail, []string{"counting"}) {
			t.Errorf("log tail %q, want the workload's log", jf.LogTail)
		}
		if jf.TasksSucceeded != 4 {
			t.Errorf("%d tasks succeeded, want 4", jf.TasksSucceeded)
		}
		if took := time.Since(stopped); took > 25*time.Second {
			t.Errorf("took %s after the last task to catch the stall", took)
		}
	})

	// One instance's workload exits 3 after 120 lines: failed, with exactly its last 50.
	t.Run("failed with the log tail", func(t *testing.T) {
		t.Parallel()
		s := c.newStack(t, nil)
		job := cloudtest.Unique("job-fail-")
		fleet := s.launch(t, job, 3)
		c.start(t, fleet[0], map[string]string{"lines": "10"})
		c.start(t, fleet[1], map[string]string{"lines": "120", "code": "3"})
		c.start(t, fleet[2], map[string]string{"lines": "10", "wait": "30"})
		s.Publish(t, s.bootstrapped(job, time.Now().Add(time.Hour), fleet))

		jf := s.jobFinished(job, 20*time.Second)
		if jf.Outcome != events.OutcomeFailed || jf.FailingInstance != fleet[1].ID {
			t.Fatalf("JobFinished %s failing %s (%s), want failed on %s", jf.Outcome, jf.FailingInstance, jf.Reason, fleet[1].ID)
		}
		if want := "workload work on " + fleet[1].ID + " exited 3"; jf.Reason != want {
			t.Errorf("reason %q, want %q", jf.Reason, want)
		}
		var want []string
		for i := 71; i <= 120; i++ {
			want = append(want, "line "+strconv.Itoa(i))
		}
		if strings.Join(jf.LogTail, "\n") != strings.Join(want, "\n") {
			t.Errorf("log tail (%d lines):\n%s\nwant lines 71-120", len(jf.LogTail), strings.Join(jf.LogTail, "\n"))
		}
		checkListsFleet(t, jf, c, fleet)
		s.dlqsEmpty()
	})

	// A workload whose log path is named by a parameter exits 3 after 60 lines: the
	// monitor renders the path with the event's params and tails that log (not the
	// workload's stderr), and tells the reaper where the log is.
	t.Run("failed with the tail of a parameterised log", func(t *testing.T) {
		t.Parallel()
		s := c.newStack(t, nil)
		job := cloudtest.Unique("job-named-")
		fleet := s.launch(t, job, 1)
		params := map[string]string{"name": "resize"}
		c.startRecipe(t, fleet[0], "named", params)
		e := s.bootstrapped(job, time.Now().Add(time.Hour), fleet)
		e.Recipe, e.Params = "named", params
		s.Publish(t, e)

		jf := s.jobFinished(job, 20*time.Second)
		if jf.Outcome != events.OutcomeFailed || jf.FailingInstance != fleet[0].ID {
			t.Fatalf("JobFinished %s failing %s (%s), want failed on %s", jf.Outcome, jf.FailingInstance, jf.Reason, fleet[0].ID)
		}
		if want := "workload work on " + fleet[0].ID + " exited 3"; jf.Reason != want {
			t.Errorf("reason %q, want %q", jf.Reason, want)
		}
		var want []string
		for i := 11; i <= 60; i++ {
			want = append(want, "line "+strconv.Itoa(i))
		}
		if strings.Join(jf.LogTail, "\n") != strings.Join(want, "\n") {
			t.Errorf("log tail (%d lines):\n%s\nwant lines 11-60 of logs/resize.log", len(jf.LogTail), strings.Join(jf.LogTail, "\n"))
		}
		if !slices.Equal(jf.Logs, []string{"logs/resize.log"}) {
			t.Errorf("JobFinished logs %q, want [logs/resize.log]", jf.Logs)
		}
		checkListsFleet(t, jf, c, fleet)
		s.dlqsEmpty()
	})

	// A workload still running: the lease is refreshed at each check, and past the
	// deadline plus grace the job times out with the running workload's tail.
	t.Run("lease refreshed then timed out", func(t *testing.T) {
		t.Parallel()
		s := c.newStack(t, func(cfg *Config) { cfg.Grace = time.Second })
		job := cloudtest.Unique("job-slow-")
		fleet := s.launch(t, job, 1)
		c.start(t, fleet[0], map[string]string{"lines": "3", "wait": "60"})
		deadline := time.Now().Add(4 * time.Second)
		s.Publish(t, s.bootstrapped(job, deadline, fleet))

		var lease time.Time
		cloudtest.Eventually(t, 10*time.Second, func() error {
			raw := c.instanceTags(t, ids(fleet))[fleet[0].ID][tags.LeaseExpires]
			l, err := time.Parse(time.RFC3339, raw)
			if err != nil || !l.After(time.Now().Add(50*time.Second)) {
				return fmt.Errorf("lease tag still %q: not refreshed", raw)
			}
			lease = l
			return nil
		})
		if lease.After(time.Now().Add(61 * time.Second)) {
			t.Errorf("lease %s, want about now + 1m", lease)
		}

		jf := s.jobFinished(job, 20*time.Second)
		if jf.Outcome != events.OutcomeTimedOut || jf.FailingInstance != fleet[0].ID {
			t.Fatalf("JobFinished %s failing %q (%s), want timed_out on %s", jf.Outcome, jf.FailingInstance, jf.Reason, fleet[0].ID)
		}
		if !strings.Contains(jf.Reason, "plus grace 1s passed with workloads still running on "+fleet[0].ID) {
			t.Errorf("reason %q", jf.Reason)
		}
		if strings.Join(jf.LogTail, ",") != "line 1,line 2,line 3" {
			t.Errorf("log tail %q, want the running workload's output", jf.LogTail)
		}
		if time.Now().Before(deadline.Add(time.Second)) {
			t.Errorf("timed out before the deadline plus grace")
		}
		s.dlqsEmpty()
	})

	// An instance that cannot be reached fails the job after MaxMisses checks.
	t.Run("unreachable", func(t *testing.T) {
		t.Parallel()
		s := c.newStack(t, func(cfg *Config) { cfg.MaxMisses = 2; cfg.SSHTimeout = 500 * time.Millisecond })
		job := cloudtest.Unique("job-lost-")
		fleet := s.launch(t, job, 2)
		c.start(t, fleet[0], map[string]string{"lines": "1", "wait": "30"})
		// EC2 (the local cloud's endpoint tag, in local mode) now gives an address where
		// nothing listens: the event's endpoint is not what the monitor dials.
		if _, err := c.ec2.CreateTags(t.Context(), &ec2.CreateTagsInput{Resources: []string{fleet[1].ID},
			Tags: []ec2types.Tag{{Key: aws.String(tags.SSHEndpoint), Value: aws.String("127.0.0.1:1")}}}); err != nil {
			t.Fatal(err)
		}
		s.Publish(t, s.bootstrapped(job, time.Now().Add(time.Hour), fleet))
		jf := s.jobFinished(job, 20*time.Second)
		if jf.Outcome != events.OutcomeFailed || jf.FailingInstance != fleet[1].ID ||
			!strings.HasPrefix(jf.Reason, "instance "+fleet[1].ID+" unreachable over SSH at 2 checks in a row") {
			t.Errorf("JobFinished %s failing %q: %s", jf.Outcome, jf.FailingInstance, jf.Reason)
		}
		s.dlqsEmpty()
	})

	// The recipe failed on one instance: JobFinished at once, listing every instance.
	t.Run("bootstrap failed", func(t *testing.T) {
		t.Parallel()
		s := c.newStack(t, nil)
		job := cloudtest.Unique("job-boot-")
		fleet := s.launch(t, job, 2)
		fleet[1].OK, fleet[1].Error, fleet[1].Steps = false, "step tools exited 127", []events.StepResult{
			{Name: "tools", ExitCode: 127, OutputTail: []string{"sh: 1: convert: not found"}}}
		start := time.Now()
		s.Publish(t, s.bootstrapped(job, time.Now().Add(time.Hour), fleet))
		jf := s.jobFinished(job, 10*time.Second)
		if jf.Outcome != events.OutcomeFailed || jf.FailingInstance != fleet[1].ID ||
			strings.Join(jf.LogTail, "") != "sh: 1: convert: not found" || !strings.Contains(jf.Reason, "step tools exited 127") {
			t.Errorf("JobFinished %+v", jf)
		}
		if len(jf.Instances) != 2 {
			t.Errorf("JobFinished lists %d instances, want both", len(jf.Instances))
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("JobFinished took %s: a failed bootstrap must not wait for a check", d)
		}
		s.dlqsEmpty()
	})

	// A FleetBootstrapped naming an instance of another stack (same fleet tag, Sortie's
	// tags): that instance is never probed nor tagged; the job fails with the reason and
	// JobFinished hands only the fleet's own instance to the reaper.
	t.Run("another stack's instance is never touched", func(t *testing.T) {
		t.Parallel()
		s := c.newStack(t, nil)
		job := cloudtest.Unique("job-foreign-")
		own := s.launch(t, job, 1)
		c.start(t, own[0], map[string]string{"lines": "1", "wait": "30"})
		foreign := c.launchTagged(t, 1, c.hostKey.UserData, map[string]string{
			tags.Stack: "someone-else", tags.Fleet: job, tags.JobID: job, tags.LeaseExpires: "2000-01-01T00:00:00Z",
		})
		s.Publish(t, s.bootstrapped(job, time.Now().Add(time.Hour), append(own, foreign...)))
		jf := s.jobFinished(job, 20*time.Second)
		if jf.Outcome != events.OutcomeFailed || !strings.Contains(jf.Reason, "instance "+foreign[0].ID+" is not an instance of fleet "+job+" in stack "+s.Topology.Prefix) {
			t.Errorf("JobFinished %s: %q, want failed naming the foreign instance", jf.Outcome, jf.Reason)
		}
		if len(jf.Instances) != 1 || jf.Instances[0].ID != own[0].ID {
			t.Errorf("JobFinished lists %+v, want only %s", jf.Instances, own[0].ID)
		}
		cloudtest.Eventually(t, 5*time.Second, func() error {
			if st := c.instanceTags(t, ids(own))[own[0].ID][tags.Stage]; st != StageFinished {
				return fmt.Errorf("own instance stage %q, want %q", st, StageFinished)
			}
			return nil
		})
		tg := c.instanceTags(t, ids(foreign))[foreign[0].ID]
		if tg[tags.LeaseExpires] != "2000-01-01T00:00:00Z" || tg[tags.Stage] != "" {
			t.Errorf("the foreign instance was tagged: lease %q, stage %q", tg[tags.LeaseExpires], tg[tags.Stage])
		}
		s.dlqsEmpty()
	})

	// A template whose instances make their own host keys: the monitor pins the key each
	// instance printed to its console, and the job succeeds.
	t.Run("instance host keys", func(t *testing.T) {
		t.Parallel()
		own := *c
		own.consoleKeys = true
		s := own.newStack(t, nil)
		job := cloudtest.Unique("job-ownkeys-")
		fleet := own.launchTagged(t, 2, "", map[string]string{tags.Stack: s.Topology.Prefix, tags.Fleet: job})
		for _, in := range fleet {
			own.start(t, in, map[string]string{"lines": "2"})
		}
		e := s.bootstrapped(job, time.Now().Add(time.Hour), fleet)
		e.Template, e.HostKey = "own-keys", ""
		s.Publish(t, e)
		jf := s.jobFinished(job, 20*time.Second)
		if jf.Outcome != events.OutcomeSucceeded || jf.HostKey != "" || len(jf.Instances) != 2 {
			t.Errorf("JobFinished %s (%s), host key %q, %d instances; want succeeded, no fleet key, 2 instances", jf.Outcome, jf.Reason, jf.HostKey, len(jf.Instances))
		}
		s.dlqsEmpty()
	})

	// An invalid TaskReported goes to the DLQ with the reason, and counts nothing.
	t.Run("invalid TaskReported dead-lettered", func(t *testing.T) {
		t.Parallel()
		s := c.newStack(t, nil)
		bad := s.taskReported("job-bad", "job-bad", "i-0aaaaaaaaaaaaaaa1", "maybe", 1)
		body := []byte(fmt.Sprintf(`{"schema_version":1,"job_id":"job-bad","correlation_id":"c","time":%q,"fleet_id":"job-bad","instance_id":"i-0aaaaaaaaaaaaaaa1","task_id":"t","outcome":"maybe","duration_ms":1}`,
			time.Now().UTC().Format(time.RFC3339)))
		if err := s.Publisher.PublishBody(context.Background(), bad, body); err != nil {
			t.Fatal(err)
		}
		dead := cloudtest.DeadLetters(t, s.SQS, bus.DLQName(s.Topology.QueueName(bus.Monitor, bus.TaskReported)), 10*time.Second, "job-bad")
		if len(dead) != 1 || len(dead["job-bad"]) != 1 {
			t.Fatalf("DLQ holds %v, want the invalid report", dead)
		}
		msg := dead["job-bad"][0]
		if !strings.Contains(msg.Reason, "outcome") || !strings.Contains(msg.Reason, "maybe") {
			t.Errorf("DLQ reason %q does not say what is wrong", msg.Reason)
		}
		if msg.Body != string(body) {
			t.Errorf("DLQ body %q, want the message unchanged", msg.Body)
		}
		time.Sleep(500 * time.Millisecond) // past a metrics flush
		got, err := metrics.JobTotals(context.Background(), metrics.NewClient(c.cfg), "job-bad", time.Now().Add(-time.Hour), time.Now().Add(time.Minute))
		if err != nil || got != (metrics.Totals{}) {
			t.Errorf("the invalid report was counted: %+v, %v", got, err)
		}
	})
}
