package devstack

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/metrics"
	"github.com/sortie-fleet/sortie/pkg/opensshd"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/watch"
	"github.com/sortie-fleet/sortie/pkg/worker"
)

// The test binary doubles as the demo worker on the instances (as `sortie worker` does for
// `sortie dev`): the stack's sortie-worker wrapper runs it with this variable set.
const workerEnv = "SORTIE_DEVSTACK_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" {
		os.Exit(workerMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func workerMain(args []string) int {
	if len(args) > 0 && args[0] == "report" {
		return reportMain(args[1:])
	}
	if len(args) > 0 && args[0] == "exited" { // the start steps' exit report
		return exitedMain(args[1:])
	}
	fs := flag.NewFlagSet("sortie-worker", flag.ContinueOnError)
	bucket := fs.String("bucket", "", "")
	queue := fs.String("queue", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	return onInstance(func(ctx context.Context, cfg aws.Config, env worker.JobEnv) error {
		wc := worker.Config{Bucket: *bucket, Queue: *queue, AWS: cfg, Out: os.Stdout}
		env.Apply(&wc)
		return worker.Run(ctx, wc)
	})
}

// onInstance runs fn as the worker binary does on an instance: with the job's env from
// $HOME/.sortie/job.env and the instance's AWS access; its error is the exit status.
func onInstance(fn func(ctx context.Context, cfg aws.Config, env worker.JobEnv) error) int {
	home, _ := os.UserHomeDir()
	env, err := worker.LoadJobEnv(home)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx := context.Background()
	cfg, err := awsx.Load(ctx, "worker")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := fn(ctx, cfg, env); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// reportMain is `sortie-worker report` (cmd/sortie's WorkerReportCmd) inside the test binary.
func reportMain(args []string) int {
	fs := flag.NewFlagSet("sortie-worker report", flag.ContinueOnError)
	var r worker.Report
	fs.StringVar(&r.Task, "task", "", "")
	fs.StringVar(&r.Outcome, "status", "", "")
	fs.DurationVar(&r.Duration, "duration", 0, "")
	fs.StringVar(&r.Detail, "detail", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	return onInstance(func(ctx context.Context, cfg aws.Config, env worker.JobEnv) error {
		return worker.Publish(ctx, cfg, env, r)
	})
}

const hostile = `"; rm -rf ~"`

// e2eOps is the embedded configuration plus the recipes the scenarios need.
func e2eOps(t testing.TB) *opsconfig.Config {
	t.Helper()
	ops := opsconfig.Default()
	// fail-one: every instance writes 80 log lines; the first to take a lock shared by the
	// instances (their directories are siblings) fails with exit 3.
	ops.Recipes["fail-one"] = opsconfig.Recipe{Steps: []opsconfig.Step{{
		Name: "work",
		Start: &opsconfig.Start{Argv: []string{"sh", "-c",
			`i=0; while [ $i -lt 80 ]; do echo "log line $i"; i=$((i+1)); done; if mkdir ../fail-lock 2>/dev/null; then echo "this instance fails"; exit 3; fi`}},
	}}}
	// quick: a workload that succeeds at once.
	ops.Recipes["quick"] = opsconfig.Recipe{Steps: []opsconfig.Step{{
		Name: "work", Start: &opsconfig.Start{Argv: []string{"sh", "-c", "echo done"}},
	}}}
	// nap: a workload that works for a second, then succeeds.
	ops.Recipes["nap"] = opsconfig.Recipe{Steps: []opsconfig.Step{{
		Name: "nap", Start: &opsconfig.Start{Argv: []string{"sh", "-c", "sleep 1; echo rested"}},
	}}}
	// echo: hands a free-form parameter to a shell command, quoted.
	ops.Recipes["echo"] = opsconfig.Recipe{
		Params: map[string]opsconfig.Param{"message": {Pattern: `[^\x00\n]*`, Required: true}},
		Steps: []opsconfig.Step{
			{Name: "canary", Run: &opsconfig.Run{Argv: []string{"touch", "canary"}}},
			{Name: "say", Run: &opsconfig.Run{Argv: []string{"sh", "-c", `printf %s "$1" > message.txt`, "sh", "{{message}}"}}},
			{Name: "work", Start: &opsconfig.Start{Argv: []string{"true"}}},
		},
	}
	// demo-own-keys: the demo template, but every instance makes its own SSH host key and
	// Sortie pins the one it prints to its console.
	own := ops.Templates["demo"]
	own.HostKeys = opsconfig.HostKeysInstance
	ops.Templates["demo-own-keys"] = own
	// The scenarios assert their plans: they size with the configured rates. Every e2e
	// stack of the process shares one ledger table (kumo is process-global), so without
	// this the demo jobs of earlier runs (-count) would teach the planner their rate.
	// TestLearnedRatesMoveThePlan learns on a stack of its own.
	ops.Learning.Off = true
	if err := ops.Validate(); err != nil {
		t.Fatal(err)
	}
	return ops
}

type e2e struct {
	*Stack
	t     testing.TB
	calls *awsx.Recorder // every AWS call of every service
	// workerCalls is the file the workers on the instances append their AWS calls to.
	workerCalls string
	w           *watch.Watcher
	mu          sync.Mutex
	execs       []string // every command run on any instance: "<id> <command>"
}

// exitedMain is `sortie-worker exited --step STEP --code N`, as `sortie worker exited`.
func exitedMain(args []string) int {
	fs := flag.NewFlagSet("sortie-worker exited", flag.ContinueOnError)
	step := fs.String("step", "", "")
	code := fs.Int("code", -1, "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	return onInstance(func(ctx context.Context, cfg aws.Config, env worker.JobEnv) error {
		return worker.PublishExit(ctx, cfg, env, *step, *code)
	})
}

func startE2E(t testing.TB) *e2e {
	t.Helper()
	return startE2EOpts(t, localcloud.SSHEmbedded, 0)
}

// startE2EWith starts the stack with the given SSH server on the instances.
func startE2EWith(t testing.TB, sshServer string) *e2e {
	t.Helper()
	return startE2EOpts(t, sshServer, 0)
}

// startE2EInterval is startE2E with the monitor's check interval (0: the dev stack's 1 s).
func startE2EInterval(t testing.TB, interval time.Duration) *e2e {
	t.Helper()
	return startE2EOpts(t, localcloud.SSHEmbedded, interval)
}

// startE2EOpts starts the stack with the given SSH server on the instances and monitor
// check interval.
func startE2EOpts(t testing.TB, sshServer string, interval time.Duration, mods ...func(*opsconfig.Config)) *e2e {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: starts the whole stack")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e := &e2e{t: t, calls: awsx.NewRecorder(localcloud.Account), workerCalls: filepath.Join(t.TempDir(), "worker-calls.jsonl")}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ops := e2eOps(t)
	for _, m := range mods {
		m(ops)
	}
	if err := ops.Validate(); err != nil {
		t.Fatal(err)
	}
	// SORTIE_E2E_LOG names a file for the services' logs (debugging a failing scenario).
	logger := slog.New(slog.DiscardHandler)
	if p := os.Getenv("SORTIE_E2E_LOG"); p != "" {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		logger = slog.New(slog.NewJSONHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	st, err := Start(ctx, Options{
		Prefix:          "e2e",
		Logger:          logger,
		Ops:             ops,
		SSH:             sshServer,
		MonitorInterval: interval,
		WorkerCommand:   []string{"/usr/bin/env", workerEnv + "=1", exe},
		Recorder:        e.calls,
		WorkerEnv:       []string{awsx.EnvCallLog + "=" + e.workerCalls},
		OnExec: func(id, cmd string) {
			e.mu.Lock()
			e.execs = append(e.execs, id+" "+cmd)
			e.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("closing the stack: %v", err)
		}
	})
	e.Stack = st
	if e.w, err = st.Watch(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.w.Close(context.Background()) })
	return e
}

// run submits job and follows it to FleetTerminated.
func (e *e2e) run(job events.JobSubmitted, copies int) Trace {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for range copies {
		if err := e.Publisher.Publish(ctx, job); err != nil {
			e.t.Fatal(err)
		}
	}
	var log bytes.Buffer
	tr, err := Follow(ctx, e.w, job.JobID, &log)
	if err != nil {
		e.t.Fatalf("following %s: %v (services: %v)\n%s", job.JobID, err, e.Err(), log.String())
	}
	e.t.Logf("job %s:\n%s", job.JobID, log.String())
	return tr
}

func (e *e2e) instances(jobID string) []ec2types.Instance {
	e.t.Helper()
	return cloudtest.DescribeInstances(e.t, e.EC2, &ec2.DescribeInstancesInput{
		Filters: []ec2types.Filter{{Name: aws.String("tag:sortie:job-id"), Values: []string{jobID}}},
	})
}

// waitTerminated polls until every instance of the job is terminated.
func (e *e2e) waitTerminated(jobID string, want int) []ec2types.Instance {
	e.t.Helper()
	var insts []ec2types.Instance
	cloudtest.Eventually(e.t, 30*time.Second, func() error {
		insts = e.instances(jobID)
		done := len(insts) == want
		states := []string{}
		for _, in := range insts {
			states = append(states, aws.ToString(in.InstanceId)+"="+string(in.State.Name))
			if in.State.Name != ec2types.InstanceStateNameTerminated {
				done = false
			}
		}
		if !done {
			return fmt.Errorf("job %s: want %d terminated instances, have %v", jobID, want, states)
		}
		return nil
	})
	return insts
}

// archive downloads one archive and returns its files.
func (e *e2e) archive(a events.Archive) map[string]string {
	e.t.Helper()
	body, head := cloudtest.Download(e.t, e.S3, a.Bucket, a.Key)
	if head.ServerSideEncryption != "aws:kms" {
		e.t.Errorf("archive %s: SSE %q, want aws:kms", a.Key, head.ServerSideEncryption)
	}
	return cloudtest.Untar(e.t, body)
}

func (e *e2e) dlqDepths() map[string]int {
	e.t.Helper()
	var queues []string
	for _, s := range e.Topology.Subscriptions() {
		queues = append(queues, s.DLQ)
	}
	for _, svc := range bus.TimerServices {
		queues = append(queues, bus.DLQName(e.Topology.TimerQueueName(svc)))
	}
	depths := map[string]int{}
	for _, q := range queues {
		depths[q] = cloudtest.QueueDepth(e.t, e.SQS, q)
	}
	return depths
}

func TestEndToEnd(t *testing.T) {
	e := startE2E(t)
	// Job ids are unique per run: kumo's state (CloudWatch totals by job id) outlives a
	// run when the test is repeated in one process (-count).
	run := cloudtest.Unique("-")

	t.Run("demo job", func(t *testing.T) {
		e.t = t
		ctx := context.Background()
		demo, err := e.SeedDemo(ctx, DemoFiles)
		if err != nil {
			t.Fatal(err)
		}
		submitted := time.Now()
		job := DemoJob(demo, "e2e-demo"+run, "corr-demo", submitted)
		tr := e.run(job, 1)

		if tr.Planned == nil || tr.Planned.Count != 3 || tr.Planned.InstanceType != "m3.medium" {
			t.Fatalf("plan = %+v, want 3 m3.medium", tr.Planned)
		}
		if tr.Bootstrapped == nil || len(tr.Bootstrapped.Instances) != 3 {
			t.Fatalf("bootstrapped = %+v", tr.Bootstrapped)
		}
		for _, in := range tr.Bootstrapped.Instances {
			if !in.OK || len(in.Steps) == 0 {
				t.Errorf("instance %s not bootstrapped: %+v", in.ID, in)
			}
			for _, s := range in.Steps {
				if s.ExitCode != 0 {
					t.Errorf("instance %s step %s exit %d", in.ID, s.Name, s.ExitCode)
				}
			}
		}
		if tr.Finished == nil || tr.Finished.Outcome != events.OutcomeSucceeded {
			t.Fatalf("finished = %+v", tr.Finished)
		}
		if tr.Finished.TasksSucceeded != DemoFiles || tr.Finished.TasksFailed != 0 {
			t.Errorf("JobFinished tasks = %d/%d, want %d/0", tr.Finished.TasksSucceeded, tr.Finished.TasksFailed, DemoFiles)
		}

		insts := e.waitTerminated(job.JobID, 3)
		for _, in := range insts {
			id := aws.ToString(in.InstanceId)
			tags := cloudtest.Tags(in)
			if got := tags["sortie:fleet"]; got != job.JobID {
				t.Errorf("%s sortie:fleet = %q", id, got)
			}
			if got := tags["Name"]; got != "sortie-"+job.JobID {
				t.Errorf("%s Name = %q", id, got)
			}
			if _, err := time.Parse(time.RFC3339, tags["sortie:lease-expires"]); err != nil {
				t.Errorf("%s sortie:lease-expires: %v", id, err)
			}
			if in.InstanceType != "m3.medium" {
				t.Errorf("%s type %s", id, in.InstanceType)
			}
		}

		res, err := e.S3.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(demo.Bucket), Prefix: aws.String("results/" + job.JobID + "/")})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Contents) != DemoFiles {
			t.Errorf("%d results in S3, want %d", len(res.Contents), DemoFiles)
		}
		totals, err := metrics.JobTotals(ctx, e.CW, job.JobID, submitted.Add(-time.Minute), time.Now().Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if totals.Succeeded != DemoFiles || totals.Failed != 0 {
			t.Errorf("CloudWatch totals = %+v, want %d succeeded", totals, DemoFiles)
		}

		if tr.Terminated.Outcome != events.OutcomeSucceeded || len(tr.Terminated.Archives) != 3 || len(tr.Terminated.TerminatedInstanceIDs) != 3 {
			t.Fatalf("terminated = %+v", tr.Terminated)
		}
		if tr.Terminated.InstanceSeconds <= 0 {
			t.Errorf("instance-seconds = %v", tr.Terminated.InstanceSeconds)
		}
		for _, a := range tr.Terminated.Archives {
			if a.Key != "logs/"+job.JobID+"/"+a.InstanceID+".tar.gz" {
				t.Errorf("archive key %s", a.Key)
			}
			files := e.archive(a)
			var log string
			for name, body := range files {
				if strings.HasSuffix(name, "worker.log") {
					log = body
				}
			}
			if !strings.Contains(log, "input/file-") {
				t.Errorf("archive %s: worker log missing or empty (files %v)", a.Key, slices.Sorted(maps.Keys(files)))
			}
		}
		for q, n := range e.dlqDepths() {
			if n != 0 {
				t.Errorf("DLQ %s holds %d messages", q, n)
			}
		}
	})

	t.Run("each service serves its endpoints; the demo moved its counters", func(t *testing.T) {
		if len(e.Endpoints) != 5 {
			t.Fatalf("endpoints %+v, want one per service", e.Endpoints)
		}
		moved := map[string]string{ // a figure of each stage the demo job must have moved
			bus.Planner:      "sortie_fleets_planned_total",
			bus.Provisioner:  "sortie_instances_launched_total",
			bus.Bootstrapper: "sortie_bootstrap_step_duration_seconds",
			bus.Monitor:      "sortie_handler_duration_seconds",
			bus.Reaper:       "sortie_archive_bytes_total",
		}
		seen := map[string]bool{}
		for _, ep := range e.Endpoints {
			seen[ep.Service] = true
			if code, body := cloudtest.Get(t, ep.URL+"/readyz"); code != 200 {
				t.Errorf("%s /readyz %d %q", ep.Service, code, body)
			}
			// A handler's delivery is counted once it returns, just after it published: poll.
			cloudtest.Eventually(t, 30*time.Second, func() error {
				m, err := cloudtest.Scrape(t, ep.URL)
				if err != nil {
					return err
				}
				if v := m.Value(moved[ep.Service], "service", ep.Service); v <= 0 {
					return fmt.Errorf("%s %s = %v after the demo job, want > 0", ep.Service, moved[ep.Service], v)
				}
				if v := m.Value("sortie_messages_total", "outcome", "handled"); v <= 0 {
					return fmt.Errorf("%s handled no message", ep.Service)
				}
				return nil
			})
		}
		if len(seen) != 5 {
			t.Errorf("endpoints of %v, want the five services", seen)
		}
	})

	// The demo with instance host keys: no host key in user data or any event; each
	// instance's key is read from its console output by every service that connects.
	t.Run("demo job with instance host keys", func(t *testing.T) {
		e.t = t
		ctx := context.Background()
		demo, err := e.SeedDemo(ctx, DemoFiles)
		if err != nil {
			t.Fatal(err)
		}
		job := DemoJob(demo, "e2e-ownkeys"+run, "corr-ownkeys", time.Now())
		job.Template = "demo-own-keys"
		tr := e.run(job, 1)
		if tr.Launched == nil || tr.Launched.HostKey != "" || tr.Bootstrapped == nil || tr.Bootstrapped.HostKey != "" {
			t.Fatalf("launched %+v: want no fleet host key in any event", tr.Launched)
		}
		for _, in := range tr.Bootstrapped.Instances {
			if !in.OK {
				t.Errorf("instance %s not bootstrapped: %s", in.ID, in.Error)
			}
		}
		if tr.Finished == nil || tr.Finished.Outcome != events.OutcomeSucceeded || tr.Finished.TasksSucceeded != DemoFiles {
			t.Fatalf("finished = %+v", tr.Finished)
		}
		if tr.Terminated.Outcome != events.OutcomeSucceeded || len(tr.Terminated.Archives) != 3 {
			t.Fatalf("terminated = %+v: want every log archived over SSH with the console keys", tr.Terminated)
		}
		for _, in := range e.waitTerminated(job.JobID, 3) {
			if _, ok := cloudtest.Tags(in)["sortie:hostkey-nonce"]; ok {
				t.Errorf("%s: a host key nonce tag on an instance that made its own key", aws.ToString(in.InstanceId))
			}
			if in.MetadataOptions == nil || in.MetadataOptions.HttpTokens != ec2types.HttpTokensStateRequired {
				t.Errorf("%s: metadata options %+v, want IMDSv2 required", aws.ToString(in.InstanceId), in.MetadataOptions)
			}
		}
	})

	t.Run("workload fails on one instance", func(t *testing.T) {
		e.t = t
		job := events.JobSubmitted{Header: events.NewHeader("e2e-fail"+run, "corr-fail", time.Now()),
			Template: "demo", Profile: "demo-fast", Recipe: "fail-one", Work: events.WorkSource{Count: DemoFiles}, DeadlineSeconds: 20}
		tr := e.run(job, 1)
		if tr.Finished == nil || tr.Finished.Outcome != events.OutcomeFailed {
			t.Fatalf("finished = %+v", tr.Finished)
		}
		want := []string{}
		for i := 31; i < 80; i++ {
			want = append(want, fmt.Sprintf("log line %d", i))
		}
		want = append(want, "this instance fails")
		if !slices.Equal(tr.Finished.LogTail, want) {
			t.Errorf("failing tail = %q\nwant the last 50 lines %q", tr.Finished.LogTail, want)
		}
		if tr.Finished.FailingInstance == "" {
			t.Error("no failing instance named")
		}
		e.waitTerminated(job.JobID, 3)
		if len(tr.Terminated.Archives) != 3 {
			t.Errorf("%d archives, want 3 (logs are archived on failure too)", len(tr.Terminated.Archives))
		}
		for _, a := range tr.Terminated.Archives {
			if a.InstanceID != tr.Finished.FailingInstance {
				continue
			}
			found := false
			for name, body := range e.archive(a) {
				if strings.Contains(body, "this instance fails") {
					found = true
					t.Logf("failing log archived as %s", name)
				}
			}
			if !found {
				t.Errorf("the failing instance's archive lacks its log")
			}
		}
	})

	t.Run("the same job delivered twice makes one fleet", func(t *testing.T) {
		e.t = t
		job := events.JobSubmitted{Header: events.NewHeader("e2e-twice"+run, "corr-twice", time.Now()),
			Template: "demo", Profile: "demo-fast", Recipe: "quick", Work: events.WorkSource{Count: DemoFiles}, DeadlineSeconds: 20}
		tr := e.run(job, 2)
		if tr.Terminated.Outcome != events.OutcomeSucceeded {
			t.Fatalf("terminated = %+v", tr.Terminated)
		}
		// Let the duplicate run through every stage before counting.
		time.Sleep(3 * time.Second)
		if insts := e.waitTerminated(job.JobID, 3); len(insts) != 3 {
			t.Errorf("%d instances for the job, want 3", len(insts))
		}
	})

	t.Run("hostile parameter is quoted, never spliced", func(t *testing.T) {
		e.t = t
		job := events.JobSubmitted{Header: events.NewHeader("e2e-quote"+run, "corr-quote", time.Now()),
			Template: "demo", Profile: "demo-fast", Recipe: "echo", Work: events.WorkSource{Count: 1}, DeadlineSeconds: 10,
			Params: map[string]string{"message": hostile}}
		tr := e.run(job, 1)
		if tr.Terminated.Outcome != events.OutcomeSucceeded || len(tr.Launched.Instances) != 1 {
			t.Fatalf("terminated = %+v", tr.Terminated)
		}
		id := tr.Launched.Instances[0].ID
		steps, err := recipe.Render(e.Ops.Recipes["echo"], job.Params, recipe.RenderEnv{})
		if err != nil {
			t.Fatal(err)
		}
		var say string
		for _, s := range steps {
			if s.Name == "say" {
				say = s.Command
			}
		}
		e.mu.Lock()
		sent := slices.Clone(e.execs)
		e.mu.Unlock()
		if !slices.Contains(sent, id+" "+say) {
			t.Errorf("the exact rendered command was not sent to %s:\nwant %q\nsent %q", id, say, sent)
		}
		if !strings.Contains(say, `'"; rm -rf ~"'`) {
			t.Errorf("command %q does not hold the value single-quoted", say)
		}
		for _, c := range sent {
			if strings.Contains(c, hostile) && !strings.Contains(c, `'`+hostile+`'`) {
				t.Errorf("the hostile value reached a shell unquoted: %q", c)
			}
		}
		dir := e.Cloud.InstanceDir(id)
		got, err := os.ReadFile(filepath.Join(dir, "message.txt"))
		if err != nil || string(got) != hostile {
			t.Errorf("message.txt = %q, %v; want the value literally", got, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "canary")); err != nil {
			t.Errorf("canary gone (the instance's home was wiped?): %v", err)
		}
	})

	t.Run("bad job messages go to the DLQ", func(t *testing.T) {
		e.t = t
		ctx := context.Background()
		before := len(e.allInstances())
		dlq := bus.DLQName(e.Topology.QueueName(bus.Planner, bus.JobSubmitted))
		valid := func(id string) events.JobSubmitted {
			return events.JobSubmitted{Header: events.NewHeader(id, "corr-"+id, time.Now()),
				Template: "demo", Profile: "demo-fast", Recipe: "demo-worker", Work: events.WorkSource{Count: 5}, DeadlineSeconds: 60,
				Params: map[string]string{"bucket": "e2e-demo", "queue": "e2e-demo-work"}}
		}
		unknown := valid("bad-template" + run)
		unknown.Template = "no-such-template"
		hostileJob := valid("bad-param" + run)
		hostileJob.Params["queue"] = hostile
		cases := []struct {
			jobID, body, reason string
		}{ // ids unique per run: the ledger answers a reused job id instead of dead-lettering it
			{"bad-json" + run, `{"schema_version":1,"job_id":"bad-json",`, "invalid"},
			{"bad-template" + run, string(cloudtest.Encode(t, unknown)), `unknown template "no-such-template"`},
			{"bad-count" + run, strings.Replace(string(cloudtest.Encode(t, valid("bad-count"+run))), `"count":5`, `"count":0`, 1), "work"},
			{"bad-deadline" + run, strings.Replace(string(cloudtest.Encode(t, valid("bad-deadline"+run))), `"deadline_seconds":60`, `"deadline_seconds":-5`, 1), "deadline_seconds"},
			{"bad-param" + run, string(cloudtest.Encode(t, hostileJob)), "queue"},
		}
		var ids []string
		for _, c := range cases {
			if err := e.Publisher.PublishBody(ctx, rawEvent{c.jobID}, []byte(c.body)); err != nil {
				t.Fatalf("%s: %v", c.jobID, err)
			}
			ids = append(ids, c.jobID)
		}
		got := cloudtest.DeadLetters(t, e.SQS, dlq, 30*time.Second, ids...) // fails unless every case is there
		for _, c := range cases {
			m := got[c.jobID][0]
			if !strings.Contains(m.Reason, c.reason) {
				t.Errorf("%s: DLQ reason %q does not mention %q", c.jobID, m.Reason, c.reason)
			}
			if m.Body != c.body {
				t.Errorf("%s: DLQ body changed", c.jobID)
			}
		}
		time.Sleep(time.Second)
		if after := len(e.allInstances()); after != before {
			t.Errorf("bad jobs launched %d instances", after-before)
		}
		for _, c := range e.execs {
			if strings.Contains(c, "rm -rf") && !strings.Contains(c, "e2e-quote"+run) && strings.Contains(c, "bad-param") {
				t.Errorf("the hostile job reached an instance: %q", c)
			}
		}
	})

	// Last: every AWS call the services made above — the demo, a failing job, a duplicate,
	// hostile and bad jobs — is allowed by that service's policy in the Terraform.
	t.Run("every AWS call is allowed by the Terraform policies", func(t *testing.T) {
		e.t = t
		e.checkCalls(t, DemoFor(e.Topology.Prefix))
	})
}

type rawEvent struct{ jobID string }

func (r rawEvent) EventType() string                  { return bus.JobSubmitted }
func (r rawEvent) IDs() (jobID, correlationID string) { return r.jobID, "corr-" + r.jobID }

func (e *e2e) allInstances() []ec2types.Instance {
	e.t.Helper()
	return cloudtest.DescribeInstances(e.t, e.EC2, &ec2.DescribeInstancesInput{})
}

// TestEndToEndOpenSSH runs the demo job with every instance a Debian sshd
// (`sortie localcloud --ssh openssh`): the bootstrapper, monitor and reaper against the
// real server, host keys pinned from user data.
func TestEndToEndOpenSSH(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts the whole stack")
	}
	if err := opensshd.Available(""); err != nil {
		cloudtest.MissingTool(t, "the OpenSSH end-to-end run needs sshd: "+err.Error())
	}
	e := startE2EWith(t, localcloud.SSHOpenSSH)
	ctx := context.Background()
	demo, err := e.SeedDemo(ctx, DemoFiles)
	if err != nil {
		t.Fatal(err)
	}
	submitted := time.Now()
	job := DemoJob(demo, "e2e-openssh"+cloudtest.Unique("-"), "corr-openssh", submitted)
	tr := e.run(job, 1)
	if tr.Bootstrapped == nil || len(tr.Bootstrapped.Instances) != 3 {
		t.Fatalf("bootstrapped = %+v", tr.Bootstrapped)
	}
	for _, in := range tr.Bootstrapped.Instances {
		if !in.OK || len(in.Steps) != 3 {
			t.Errorf("instance %s not bootstrapped by sshd: %+v", in.ID, in)
		}
	}
	if tr.Finished == nil || tr.Finished.Outcome != events.OutcomeSucceeded || tr.Finished.TasksSucceeded != DemoFiles {
		t.Fatalf("finished = %+v, want %d tasks succeeded", tr.Finished, DemoFiles)
	}
	if tr.Terminated == nil || len(tr.Terminated.Archives) != 3 {
		t.Fatalf("terminated = %+v, want 3 archives", tr.Terminated)
	}
	for _, a := range tr.Terminated.Archives {
		files := e.archive(a)
		found := false
		for name, body := range files {
			found = found || (strings.HasSuffix(name, "worker.log") && strings.Contains(body, "input/file-"))
		}
		if !found {
			t.Errorf("archive %s: no worker log (files %v)", a.Key, slices.Sorted(maps.Keys(files)))
		}
	}
	e.waitTerminated(job.JobID, 3)
	for _, in := range tr.Bootstrapped.Instances {
		if c, err := net.DialTimeout("tcp", in.SSHEndpoint, time.Second); err == nil {
			c.Close()
			t.Errorf("instance %s: sshd still listening on %s after terminate", in.ID, in.SSHEndpoint)
		}
	}
}

// playbook is the bundle's site.yml: three tasks, run with ansible-playbook -c local.
const playbook = `- hosts: all
  gather_facts: false
  tasks:
    - name: write a file
      copy:
        dest: "{{ lookup('env', 'HOME') }}/ansible-was-here"
        content: "hello from ansible\n"
    - name: say hello
      command: echo hello
    - name: check the file
      stat:
        path: "{{ lookup('env', 'HOME') }}/ansible-was-here"
`

// TestEndToEndAnsible runs the embedded recipe "ansible" through the whole pipeline with
// Debian's ansible on a local-cloud instance: the bundle fetched from S3 through a
// presigned URL, ansible-playbook -c local detached, each task reported by the callback
// plugin through sortie-worker report and counted by the monitor.
func TestEndToEndAnsible(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts the whole stack")
	}
	if _, err := exec.LookPath("ansible-playbook"); err != nil {
		cloudtest.MissingTool(t, "the Ansible end-to-end run needs ansible-playbook (apt-get install ansible): "+err.Error())
	}
	e := startE2E(t)
	ctx := context.Background()
	if _, err := e.S3.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("sortie-playbooks")}); err != nil &&
		awsx.ErrorCode(err) != "BucketAlreadyOwnedByYou" && awsx.ErrorCode(err) != "BucketAlreadyExists" {
		t.Fatal(err)
	}
	bundle := cloudtest.Unique("e2e-")
	var tgz bytes.Buffer
	zw := gzip.NewWriter(&tgz)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: "site.yml", Mode: 0o644, Size: int64(len(playbook)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(playbook)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.S3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("sortie-playbooks"), Key: aws.String("playbooks/" + bundle + ".tar.gz"), Body: bytes.NewReader(tgz.Bytes())}); err != nil {
		t.Fatal(err)
	}

	submitted := time.Now()
	job := events.JobSubmitted{Header: events.NewHeader("e2e-ansible"+cloudtest.Unique("-"), "corr-ansible", submitted),
		Template: "demo", Profile: "demo-fast", Recipe: "ansible", Params: map[string]string{"bundle": bundle},
		Work: events.WorkSource{Count: 1}, DeadlineSeconds: 120}
	tr := e.run(job, 1)
	if tr.Bootstrapped == nil || len(tr.Bootstrapped.Instances) != 1 || !tr.Bootstrapped.Instances[0].OK {
		t.Fatalf("bootstrapped = %+v", tr.Bootstrapped)
	}
	if tr.Finished == nil || tr.Finished.Outcome != events.OutcomeSucceeded {
		t.Fatalf("finished = %+v", tr.Finished)
	}
	if tr.Finished.TasksSucceeded != 3 || tr.Finished.TasksFailed != 0 {
		t.Errorf("JobFinished tasks = %d/%d, want the playbook's 3 tasks succeeded", tr.Finished.TasksSucceeded, tr.Finished.TasksFailed)
	}
	totals, err := metrics.JobTotals(ctx, e.CW, job.JobID, submitted.Add(-time.Minute), time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if totals.Succeeded != 3 || totals.Failed != 0 {
		t.Errorf("CloudWatch totals = %+v, want 3 succeeded", totals)
	}
	if tr.Terminated == nil || len(tr.Terminated.Archives) != 1 {
		t.Fatalf("terminated = %+v", tr.Terminated)
	}
	files := e.archive(tr.Terminated.Archives[0])
	var log string
	for name, body := range files {
		if strings.HasSuffix(name, "playbook/stdout.log") {
			log = body
		}
	}
	if !strings.Contains(log, "PLAY RECAP") || !strings.Contains(log, "ok=3") {
		t.Errorf("playbook log lacks a recap with ok=3:\n%s\n(files %v)", log, slices.Sorted(maps.Keys(files)))
	}
}
