package bootstrapper_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/tags"
	"github.com/sortie-fleet/sortie/services/bootstrapper"
)

// TestBootstrapper runs the bootstrapper against the real local cloud: real instances
// (SSH hosts running /bin/sh), real SNS/SQS messages, a real presigned S3 fetch.
func TestBootstrapper(t *testing.T) {
	e := newEnv(t)
	out := e.Subscribe(t, bus.FleetBootstrapped)
	e.start()

	hk := cloudtest.NewHostKey(t)
	hostKey := hk.Authorized

	// Every step of recipe "test" on three instances; step "check" fails on the second.
	insts := e.launch("job-main", 3, hk.UserData)
	ev := e.fleetLaunched("job-main", hostKey, insts)
	ev.Params["fail_on"] = insts[1].ID
	e.Publish(t, ev)
	got := e.receive(t, out, "job-main")

	t.Run("steps succeed on the healthy instances", func(t *testing.T) {
		if len(got.Instances) != 3 {
			t.Fatalf("%d instance results, want 3", len(got.Instances))
		}
		for _, i := range []int{0, 2} {
			r := got.Instances[i]
			if !r.OK || r.Error != "" || r.ID != insts[i].ID {
				t.Errorf("instance %s: ok=%v error=%q, want ok", r.ID, r.OK, r.Error)
			}
			if want := "tool:0 config:0 check:0 count:0 worker:0"; stepSummary(r) != want {
				t.Errorf("instance %s steps %q, want %q", r.ID, stepSummary(r), want)
			}
		}
	})

	t.Run("the failing step is reported with its tail", func(t *testing.T) {
		r := got.Instances[1]
		if r.OK || r.Error != "step check exited with status 3" {
			t.Fatalf("instance %s: ok=%v error=%q, want step check failed", r.ID, r.OK, r.Error)
		}
		if want := "tool:0 config:0 check:3"; stepSummary(r) != want {
			t.Fatalf("steps %q, want %q: the instance must stop at its first failure", stepSummary(r), want)
		}
		tail := r.Steps[2].OutputTail
		if len(tail) != 50 || tail[0] != "32" || tail[48] != "80" || tail[49] != "boom" {
			t.Fatalf("tail = %q, want the last 50 lines: 32..80, boom", tail)
		}
		if _, err := os.Stat(e.instanceFile(r.ID, "runs")); err == nil {
			t.Error("a step after the failing one ran")
		}
	})

	t.Run("job.env uploaded with the job's ids, mode 0600", func(t *testing.T) {
		for _, in := range insts {
			p := e.instanceFile(in.ID, ".sortie/job.env")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("SORTIE_JOB_ID=job-main\nSORTIE_CORRELATION_ID=corr-job-main\nSORTIE_FLEET_ID=job-main\nSORTIE_INSTANCE_ID=%s\nSORTIE_PREFIX=%s\n", in.ID, e.Topology.Prefix)
			if string(b) != want {
				t.Errorf("%s:\n%s\nwant:\n%s", p, b, want)
			}
			if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s mode %v, want 0600", p, fi.Mode().Perm())
			}
		}
	})

	t.Run("fetch downloaded the object through a presigned URL", func(t *testing.T) {
		b, err := os.ReadFile(e.instanceFile(insts[0].ID, "bin/tool.sh"))
		if err != nil || string(b) != toolScript {
			t.Fatalf("bin/tool.sh = %q, %v", b, err)
		}
	})

	t.Run("workload started detached and alive after the session", func(t *testing.T) {
		for _, i := range []int{0, 2} {
			res := e.ssh(insts[i], hostKey, recipe.StatusCommand("worker"))
			st, err := recipe.ParseStatus(string(res.Stdout))
			if err != nil || st.State != recipe.StateRunning {
				t.Errorf("instance %s: worker status %q (%v), want running", insts[i].ID, res.Stdout, err)
			}
			// The detached workload writes its log in its own time: poll for it.
			cloudtest.Eventually(t, 10*time.Second, func() error {
				log, _ := os.ReadFile(e.instanceFile(insts[i].ID, recipe.LogPath("worker")))
				if string(log) != "working\n" {
					return fmt.Errorf("worker log %q", log)
				}
				return nil
			})
		}
	})

	t.Run("bootstrapped instances tagged", func(t *testing.T) {
		stages := e.stageTags(insts)
		if stages[insts[0].ID] != "bootstrapped" || stages[insts[2].ID] != "bootstrapped" || stages[insts[1].ID] != "" {
			t.Fatalf("sortie:stage tags %v, want bootstrapped on the healthy instances only", stages)
		}
	})

	t.Run("event carries the fleet's fields", func(t *testing.T) {
		if got.FleetID != ev.FleetID || got.PlanRevision != 1 || got.Recipe != ev.Recipe || got.Template != ev.Template ||
			got.HostKey != ev.HostKey || got.KeyName != ev.KeyName || !got.DeadlineAt.Equal(ev.DeadlineAt) ||
			got.CorrelationID != ev.CorrelationID || !maps.Equal(got.Params, ev.Params) || len(got.Params) == 0 {
			t.Fatalf("FleetBootstrapped %+v does not carry FleetLaunched %+v", got, ev)
		}
	})

	t.Run("redelivery of a bootstrapped fleet does nothing", func(t *testing.T) {
		e.Publish(t, ev)
		cloudtest.Eventually(t, 30*time.Second, func() error {
			if !strings.Contains(e.Logs.String(), `"duplicate FleetLaunched: nothing to do"`) {
				return errors.New("the duplicate is not handled yet")
			}
			return nil
		})
		if extra := cloudtest.Collect(t, e.SQS, out, 2*time.Second, nil)["job-main"]; len(extra) != 0 {
			t.Errorf("%d FleetBootstrapped after the duplicate, want none", len(extra))
		}
	})

	t.Run("a replacement revision of a bootstrapped job is bootstrapped, once", func(t *testing.T) {
		hk2 := cloudtest.NewHostKey(t) // a later revision's fleet has a key of its own
		repl := e.launch("job-main", 1, hk2.UserData)
		ev2 := e.fleetLaunched("job-main", hk2.Authorized, repl)
		ev2.PlanRevision = 2
		ev2.Params = maps.Clone(ev.Params)
		e.Publish(t, ev2)
		got := e.receive(t, out, "job-main")
		if got.PlanRevision != 2 || got.Revision() != 2 || got.HostKey != hk2.Authorized {
			t.Errorf("FleetBootstrapped plan revision %d, host key %q: want revision 2's", got.PlanRevision, got.HostKey)
		}
		if len(got.Instances) != 1 || got.Instances[0].ID != repl[0].ID || !got.Instances[0].OK ||
			stepSummary(got.Instances[0]) != "tool:0 config:0 check:0 count:0 worker:0" {
			t.Fatalf("FleetBootstrapped instances %+v, want %s bootstrapped with every step", got.Instances, repl[0].ID)
		}
		// The stage is recorded done just after the event is published: polled.
		cloudtest.Eventually(t, 30*time.Second, func() error {
			rec, err := e.Ledger().Get(t.Context(), "job-main")
			if err != nil {
				return err
			}
			if rec.DoneAt(ledger.StageAt(ledger.Bootstrapped, 2)) == "" || rec.Attrs["rev2_bootstrapped_ok"] != "1" || rec.Attrs["bootstrapped_ok"] != "2" {
				return fmt.Errorf("ledger: bootstrapped@2 at %q, rev2_bootstrapped_ok %q, bootstrapped_ok %q: want revision 2 done with 1, revision 1's 2 kept",
					rec.DoneAt(ledger.StageAt(ledger.Bootstrapped, 2)), rec.Attrs["rev2_bootstrapped_ok"], rec.Attrs["bootstrapped_ok"])
			}
			return nil
		})

		e.Publish(t, ev2) // delivered again
		cloudtest.Eventually(t, 30*time.Second, func() error {
			for _, line := range strings.Split(e.Logs.String(), "\n") {
				if strings.Contains(line, `"duplicate FleetLaunched: nothing to do"`) && strings.Contains(line, `"plan_revision":2`) {
					return nil
				}
			}
			return errors.New("the duplicate of revision 2 is not handled yet")
		})
		if extra := cloudtest.Collect(t, e.SQS, out, 2*time.Second, nil)["job-main"]; len(extra) != 0 {
			t.Errorf("%d FleetBootstrapped after revision 2's duplicate, want none", len(extra))
		}
	})

	t.Run("a replacement revision that cannot be bootstrapped is recorded failed, not dead-lettered", func(t *testing.T) {
		ev3 := e.fleetLaunched("job-main", hostKey, insts[:1])
		ev3.PlanRevision, ev3.Recipe = 3, "nope"
		e.Publish(t, ev3)
		cloudtest.Eventually(t, 30*time.Second, func() error {
			rec, err := e.Ledger().Get(t.Context(), "job-main")
			if err != nil {
				return err
			}
			if st := rec.RevisionState(3); !strings.HasPrefix(st, ledger.RevFailed+": ") || !strings.Contains(st, `unknown recipe "nope"`) {
				return fmt.Errorf("revision 3's state %q, want failed with the reason", st)
			}
			return nil
		})
		rec, err := e.Ledger().Get(t.Context(), "job-main")
		if err != nil {
			t.Fatal(err)
		}
		if rec.DoneAt(ledger.Rejected) != "" {
			t.Errorf("the job was rejected: %s", rec.Attrs["reason"])
		}
		dlq := bus.DLQName(e.Topology.QueueName(bus.Bootstrapper, bus.FleetLaunched))
		if got := cloudtest.Collect(t, e.SQS, cloudtest.QueueURL(t, e.SQS, dlq), 2*time.Second, nil)["job-main"]; len(got) != 0 {
			t.Errorf("revision 3 dead-lettered: %d messages", len(got))
		}
		if extra := cloudtest.Collect(t, e.SQS, out, time.Second, nil)["job-main"]; len(extra) != 0 {
			t.Errorf("%d FleetBootstrapped for revision 3, want none", len(extra))
		}
	})

	t.Run("bootstrap on bootstrapped instances runs no step again", func(t *testing.T) {
		ev := ev
		ev.JobID = "job-main-again" // a claim of its own: the recipe's state on the instances decides
		e.Publish(t, ev)
		again := e.receive(t, out, "job-main-again")
		for _, i := range []int{0, 2} {
			r := again.Instances[i]
			if !r.OK || stepSummary(r) != "already-bootstrapped:0" {
				t.Errorf("instance %s: ok=%v steps %q, want only already-bootstrapped", r.ID, r.OK, stepSummary(r))
			}
			runs, _ := os.ReadFile(e.instanceFile(r.ID, "runs"))
			if string(runs) != "ran\n" {
				t.Errorf("instance %s ran step count %d times, want once", r.ID, strings.Count(string(runs), "ran"))
			}
		}
		if r := again.Instances[1]; r.OK {
			t.Errorf("instance %s that failed is now ok", r.ID)
		}
	})

	t.Run("wrong host key: that instance fails, the other is bootstrapped", func(t *testing.T) {
		good := e.launch("job-hostkey", 1, hk.UserData)
		impostor := e.launch("job-hostkey", 1, cloudtest.NewHostKey(t).UserData)
		ev := e.fleetLaunched("job-hostkey", hostKey, append(good, impostor...))
		e.Publish(t, ev)
		got := e.receive(t, out, "job-hostkey")
		if r := got.Instances[0]; !r.OK {
			t.Errorf("instance with the pinned key: ok=false, error %q", r.Error)
		}
		r := got.Instances[1]
		if r.OK || !strings.Contains(r.Error, "host key mismatch") || len(r.Steps) != 0 {
			t.Fatalf("impostor: ok=%v error=%q steps=%d, want a host key mismatch and no step", r.OK, r.Error, len(r.Steps))
		}
		if _, err := os.Stat(e.instanceFile(r.ID, ".sortie")); err == nil {
			t.Fatal("the bootstrapper wrote to an instance whose host key did not match")
		}
	})

	t.Run("invalid events go to the DLQ with the reason", func(t *testing.T) {
		bad := e.fleetLaunched("job-badrecipe", hostKey, insts[:1])
		bad.Recipe = "nope"
		e.Publish(t, bad)
		garbage := e.fleetLaunched("job-garbage", hostKey, insts[:1])
		if err := e.Publisher.PublishBody(context.Background(), garbage, []byte(`{"schema_version":1,`)); err != nil {
			t.Fatal(err)
		}
		dlq := bus.DLQName(e.Topology.QueueName(bus.Bootstrapper, bus.FleetLaunched))
		dead := cloudtest.DeadLetters(t, e.SQS, dlq, 30*time.Second, "job-badrecipe", "job-garbage")
		if r := dead["job-badrecipe"][0].Reason; !strings.Contains(r, `unknown recipe "nope"`) {
			t.Errorf("DLQ reason for the unknown recipe: %q", r)
		}
		if r := dead["job-garbage"][0].Reason; !strings.Contains(r, "malformed JSON") {
			t.Errorf("DLQ reason for the garbage body: %q", r)
		}
	})

	t.Run("no presigned URL in any log line", func(t *testing.T) {
		logs := e.Logs.String()
		if !strings.Contains(logs, "running step") {
			t.Fatal("the debug log has no step lines: the check would prove nothing")
		}
		if strings.Contains(logs, "X-Amz-Signature") || strings.Contains(logs, "X-Amz-Credential") {
			t.Fatal("a presigned URL reached the logs")
		}
	})
}

const toolScript = "#!/bin/sh\necho tool ok\n"

// toolsBucket is the one bucket testdata/ops.yaml's recipe may fetch from.
const toolsBucket = "sortie-test-tools"

// env is one test's stack, with a login key pair and the tool object, and the bootstrapper
// running on it.
type env struct {
	*cloudtest.Stack
	t       *testing.T
	key     cloudtest.KeyPair
	fetcher string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	fetcher := recipe.FetcherCurl
	if _, err := exec.LookPath("curl"); err != nil {
		fetcher = recipe.FetcherWget
		if _, err := exec.LookPath("wget"); err != nil {
			cloudtest.MissingTool(t, "neither curl nor wget is installed: the fetch step cannot run")
		}
	}
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{BootDelay: 30 * time.Millisecond, ShutdownDelay: 10 * time.Millisecond}))
	e := &env{Stack: s, t: t, fetcher: fetcher, key: cloudtest.NewKeyPair(t, s.EC2, s.Topology.Prefix+"-login")}
	// testdata/ops.yaml's recipe fetches only from this bucket; kumo is shared by the
	// package's tests, so it may exist already.
	if _, err := s.S3.CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: aws.String(toolsBucket)}); err != nil && awsx.ErrorCode(err) != "BucketAlreadyOwnedByYou" {
		t.Fatalf("CreateBucket: %v", err)
	}
	if _, err := s.S3.PutObject(t.Context(), &s3.PutObjectInput{
		Bucket: aws.String(toolsBucket), Key: aws.String("tools/tool.sh"), Body: strings.NewReader(toolScript),
	}); err != nil {
		t.Fatalf("PutObject: %v", err)
	}
	return e
}

// start runs the bootstrapper until the test ends.
func (e *env) start() { e.startWith(0) }

// startWith runs the bootstrapper with a MaxHandle (0: the default).
func (e *env) startWith(maxHandle time.Duration) {
	t := e.t
	t.Helper()
	ops := cloudtest.LoadOps(t, "testdata/ops.yaml")
	cfg := bootstrapper.Config{
		Base:        service.Base{Prefix: e.Topology.Prefix, LocalMode: true},
		SSHKey:      e.key.Path,
		DialTimeout: 10 * time.Second,
		StepTimeout: 30 * time.Second,
		Fetcher:     e.fetcher,
		MaxHandle:   maxHandle,
		PollWait:    time.Second,
	}
	e.Serve(t, func(ctx context.Context) error {
		return bootstrapper.Run(ctx, cfg, e.Deps(ops))
	})
}

// launch runs n instances of a fleet of the stack with the user data and waits until they
// are running with an SSH endpoint.
func (e *env) launch(fleet string, n int, userData string) []events.Instance {
	e.t.Helper()
	return e.launchTagged(n, userData, map[string]string{tags.Stack: e.Topology.Prefix, tags.Fleet: fleet})
}

// launchTagged runs n instances with the user data and exactly these tags.
func (e *env) launchTagged(n int, userData string, tg map[string]string) []events.Instance {
	e.t.Helper()
	return cloudtest.Launch(e.t, e.EC2, n, cloudtest.LaunchSpec{KeyName: e.key.Name, UserData: userData, Tags: tg})
}

func (e *env) fleetLaunched(jobID, hostKey string, insts []events.Instance) events.FleetLaunched {
	now := time.Now().UTC()
	return events.FleetLaunched{
		Header:       events.NewHeader(jobID, "corr-"+jobID, now),
		FleetID:      jobID,
		PlanRevision: 1,
		Template:     "test",
		Recipe:       "test",
		Params:       map[string]string{"bucket": e.Topology.BucketName()},
		DeadlineAt:   now.Add(time.Hour).Truncate(time.Second),
		KeyName:      e.key.Name,
		HostKey:      hostKey,
		Instances:    insts,
	}
}

func (e *env) instanceFile(id, rel string) string {
	return filepath.Join(e.Cloud.InstanceDir(id), rel)
}

// ssh runs cmd on an instance the way a service would: pinned host key, login key.
func (e *env) ssh(in events.Instance, hostKey, cmd string) remote.Result {
	t := e.t
	t.Helper()
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hostKey))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := remote.Dial(ctx, remote.DialConfig{Addr: in.SSHEndpoint, User: "worker", Signer: e.key.Signer, HostKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.Run(ctx, cmd, nil)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func (e *env) stageTags(insts []events.Instance) map[string]string {
	e.t.Helper()
	var ids []string
	for _, in := range insts {
		ids = append(ids, in.ID)
	}
	out := map[string]string{}
	for _, in := range cloudtest.DescribeInstances(e.t, e.EC2, &ec2.DescribeInstancesInput{InstanceIds: ids}) {
		out[aws.ToString(in.InstanceId)] = cloudtest.Tags(in)[tags.Stage]
	}
	return out
}

// receive waits for the next FleetBootstrapped of a job on the test queue.
func (e *env) receive(t *testing.T, queueURL, jobID string) events.FleetBootstrapped {
	t.Helper()
	return cloudtest.NextEvent(t, e.SQS, queueURL, jobID, time.Minute, events.DecodeFleetBootstrapped)
}

func stepSummary(r events.InstanceResult) string {
	var parts []string
	for _, s := range r.Steps {
		parts = append(parts, fmt.Sprintf("%s:%d", s.Name, s.ExitCode))
	}
	return strings.Join(parts, " ")
}

// TestBootstrapOutlivingVisibilityRunsOnce: a bootstrap (6 s) longer than the router's
// MaxHandle (1 s) and the queue's visibility timeout (2 s) gets its FleetLaunched delivered
// again while it runs; the redelivery waits for the running bootstrap (the ledger's claim)
// and finds it done: the recipe runs once, one FleetBootstrapped.
func TestBootstrapOutlivingVisibilityRunsOnce(t *testing.T) {
	e := newEnv(t)
	q := cloudtest.QueueURL(t, e.SQS, e.Topology.QueueName(bus.Bootstrapper, bus.FleetLaunched))
	if _, err := e.SQS.SetQueueAttributes(t.Context(), &sqs.SetQueueAttributesInput{
		QueueUrl: aws.String(q), Attributes: map[string]string{"VisibilityTimeout": "2"},
	}); err != nil {
		t.Fatal(err)
	}
	out := e.Subscribe(t, bus.FleetBootstrapped)
	e.startWith(time.Second)
	hk := cloudtest.NewHostKey(t)
	insts := e.launch("job-slow", 1, hk.UserData)
	ev := e.fleetLaunched("job-slow", hk.Authorized, insts)
	ev.Recipe = "slow"
	ev.Params = nil
	e.Publish(t, ev)
	got := e.receive(t, out, "job-slow")
	if len(got.Instances) != 1 || !got.Instances[0].OK {
		t.Fatalf("FleetBootstrapped %+v, want the instance bootstrapped", got.Instances)
	}
	cloudtest.Eventually(t, 30*time.Second, func() error {
		if !strings.Contains(e.Logs.String(), "delivered again while its holder runs") {
			return errors.New("no redelivery of the FleetLaunched seen yet")
		}
		if !strings.Contains(e.Logs.String(), `"duplicate FleetLaunched: nothing to do"`) {
			return errors.New("the redelivery has not found the bootstrap done yet")
		}
		return nil
	})
	if extra := cloudtest.Collect(t, e.SQS, out, 3*time.Second, nil)["job-slow"]; len(extra) != 0 {
		t.Errorf("%d more FleetBootstrapped, want none", len(extra))
	}
	runs, _ := os.ReadFile(e.instanceFile(insts[0].ID, "slow-runs"))
	if string(runs) != "ran\n" {
		t.Errorf("the slow step ran %d times, want once", strings.Count(string(runs), "ran"))
	}
}
