package monitor

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/hostkey"
	"github.com/sortie-fleet/sortie/pkg/infra"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/metrics"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/sshkey"
)

// cloud is one local cloud shared by a test's scenarios, with a key pair to log in with
// and a fleet host key handed to instances through cloud-init.
type cloud struct {
	cloud    *localcloud.Cloud
	cfg      aws.Config
	ec2      *ec2.Client
	ops      *opsconfig.Config
	keyName  string
	keyFile  string
	signer   ssh.Signer
	hostKey  string // authorized_keys format
	hostPub  ssh.PublicKey
	userData string
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func newCloud(t *testing.T) *cloud {
	t.Helper()
	lc, err := localcloud.New(localcloud.Options{Addr: "127.0.0.1:0", BootDelay: 10 * time.Millisecond, ShutdownDelay: 10 * time.Millisecond, DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("starting local cloud: %v", err)
	}
	t.Cleanup(func() { _ = lc.Close() })
	c := &cloud{cloud: lc, cfg: awsx.ForEndpoint(lc.URL()), keyName: "monitor-test-" + randomHex(t, 4)}
	c.ec2 = ec2.NewFromConfig(c.cfg)
	if c.ops, err = opsconfig.Load("testdata/ops.yaml"); err != nil {
		t.Fatal(err)
	}

	kp, err := c.ec2.CreateKeyPair(context.Background(), &ec2.CreateKeyPairInput{KeyName: aws.String(c.keyName), KeyType: ec2types.KeyTypeEd25519})
	if err != nil {
		t.Fatalf("CreateKeyPair: %v", err)
	}
	c.keyFile = filepath.Join(t.TempDir(), "fleet.pem")
	if err := os.WriteFile(c.keyFile, []byte(aws.ToString(kp.KeyMaterial)), 0o600); err != nil {
		t.Fatal(err)
	}
	if c.signer, err = sshkey.Load(context.Background(), nil, c.keyFile); err != nil {
		t.Fatal(err)
	}

	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if c.userData, err = hostkey.CloudConfig(priv); err != nil {
		t.Fatal(err)
	}
	if c.hostKey, err = hostkey.AuthorizedKey(priv); err != nil {
		t.Fatal(err)
	}
	if c.hostPub, _, _, _, err = ssh.ParseAuthorizedKey([]byte(c.hostKey)); err != nil {
		t.Fatal(err)
	}
	return c
}

// launch starts n instances with the fleet host key, an expired lease tag and the key
// pair, and returns them with their SSH endpoints.
func (c *cloud) launch(t *testing.T, n int) []events.InstanceResult {
	t.Helper()
	ctx := context.Background()
	out, err := c.ec2.RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId:      aws.String("ami-0123456789abcdef0"),
		InstanceType: ec2types.InstanceTypeM3Medium,
		MinCount:     aws.Int32(int32(n)),
		MaxCount:     aws.Int32(int32(n)),
		KeyName:      aws.String(c.keyName),
		UserData:     aws.String(base64.StdEncoding.EncodeToString([]byte(c.userData))),
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{
			{Key: aws.String(TagLeaseExpires), Value: aws.String("2000-01-01T00:00:00Z")},
		}}},
	})
	if err != nil {
		t.Fatalf("RunInstances: %v", err)
	}
	var ids []string
	for _, in := range out.Instances {
		ids = append(ids, aws.ToString(in.InstanceId))
	}
	w := ec2.NewInstanceRunningWaiter(c.ec2, func(o *ec2.InstanceRunningWaiterOptions) {
		o.MinDelay, o.MaxDelay = 10*time.Millisecond, 50*time.Millisecond
	})
	if err := w.Wait(ctx, &ec2.DescribeInstancesInput{InstanceIds: ids}, 20*time.Second); err != nil {
		t.Fatalf("waiting for instances: %v", err)
	}
	tags := c.tags(t, ids)
	var res []events.InstanceResult
	for _, id := range ids {
		res = append(res, events.InstanceResult{ID: id, SSHEndpoint: tags[id][localcloud.SSHEndpointTag], OK: true,
			Steps: []events.StepResult{{Name: "work", ExitCode: 0, DurationMS: 3}}})
	}
	return res
}

// tags returns every instance's tags.
func (c *cloud) tags(t *testing.T, ids []string) map[string]map[string]string {
	t.Helper()
	out, err := c.ec2.DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{InstanceIds: ids})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]map[string]string{}
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			tags := map[string]string{}
			for _, tg := range in.Tags {
				tags[aws.ToString(tg.Key)] = aws.ToString(tg.Value)
			}
			m[aws.ToString(in.InstanceId)] = tags
		}
	}
	return m
}

// start runs the lines recipe's steps on an instance over SSH, as the bootstrapper would.
func (c *cloud) start(t *testing.T, in events.InstanceResult, params map[string]string) {
	t.Helper()
	r, err := c.ops.Recipe("lines")
	if err != nil {
		t.Fatal(err)
	}
	steps, err := recipe.Render(r, params, recipe.RenderEnv{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := remote.Dial(ctx, remote.DialConfig{Addr: in.SSHEndpoint, User: "sortie", Signer: c.signer, HostKey: c.hostPub})
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
	t       *testing.T
	c       *cloud
	topo    bus.Topology
	sqs     *sqs.Client
	pub     *bus.Publisher
	results string // URL of the test queue subscribed to JobFinished
	logs    *syncBuffer
}

// newStack creates a stack and runs a monitor on it with fast timers; tune adjusts the
// monitor's configuration.
func (c *cloud) newStack(t *testing.T, tune func(*Config)) *stack {
	t.Helper()
	s := &stack{t: t, c: c, topo: bus.Topology{Prefix: "m" + randomHex(t, 4)}, sqs: sqs.NewFromConfig(c.cfg), logs: &syncBuffer{}}
	if _, err := infra.Up(context.Background(), infra.NewClients(c.cfg), s.topo); err != nil {
		t.Fatalf("infra up: %v", err)
	}
	s.results = s.subscribe(bus.JobFinished)
	logger := slog.New(slog.NewJSONHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	pub, err := bus.NewPublisher(bus.PublisherConfig{Topology: s.topo, AWS: c.cfg, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	s.pub = pub
	cfg := Config{
		Base:         service.Base{Prefix: s.topo.Prefix},
		SSHKey:       c.keyFile,
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
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, service.Deps{AWS: c.cfg, Ops: c.ops, Publisher: pub, Logger: logger}) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("monitor Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("monitor Run did not return 15 s after cancel")
		}
		_ = pub.Close()
		if t.Failed() {
			t.Logf("monitor logs:\n%s", s.logs.String())
		}
	})
	return s
}

// subscribe creates a test queue subscribed with raw delivery to eventType's topic.
func (s *stack) subscribe(eventType string) string {
	s.t.Helper()
	ctx := context.Background()
	q, err := s.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(s.topo.Prefix + "-test-" + strings.ToLower(eventType))})
	if err != nil {
		s.t.Fatal(err)
	}
	attrs, err := s.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: q.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
	if err != nil {
		s.t.Fatal(err)
	}
	snsc := sns.NewFromConfig(s.c.cfg)
	topic, err := snsc.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(s.topo.TopicName(eventType))})
	if err != nil {
		s.t.Fatal(err)
	}
	if _, err := snsc.Subscribe(ctx, &sns.SubscribeInput{
		TopicArn: topic.TopicArn, Protocol: aws.String("sqs"),
		Endpoint:   aws.String(attrs.Attributes[string(sqstypes.QueueAttributeNameQueueArn)]),
		Attributes: map[string]string{"RawMessageDelivery": "true"},
	}); err != nil {
		s.t.Fatal(err)
	}
	return aws.ToString(q.QueueUrl)
}

// bootstrapped returns the FleetBootstrapped of a job on instances.
func (s *stack) bootstrapped(job string, deadline time.Time, instances []events.InstanceResult) events.FleetBootstrapped {
	return events.FleetBootstrapped{
		Header:     events.NewHeader(job, "corr-"+job, time.Now()),
		FleetID:    job,
		Template:   "test",
		Recipe:     "lines",
		DeadlineAt: deadline.UTC().Truncate(time.Second),
		HostKey:    s.c.hostKey,
		KeyName:    s.c.keyName,
		Instances:  instances,
	}
}

func (s *stack) publish(e events.Event) {
	s.t.Helper()
	if err := s.pub.Publish(context.Background(), e); err != nil {
		s.t.Fatalf("publishing %s: %v", e.EventType(), err)
	}
}

// jobFinished waits for one JobFinished on the test queue.
func (s *stack) jobFinished(timeout time.Duration) events.JobFinished {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		out, err := s.sqs.ReceiveMessage(context.Background(), &sqs.ReceiveMessageInput{QueueUrl: aws.String(s.results), MaxNumberOfMessages: 10, WaitTimeSeconds: 1})
		if err != nil {
			s.t.Fatal(err)
		}
		if len(out.Messages) > 1 {
			s.t.Fatalf("%d JobFinished, want one", len(out.Messages))
		}
		for _, m := range out.Messages {
			jf, err := events.DecodeJobFinished([]byte(aws.ToString(m.Body)))
			if err != nil {
				s.t.Fatalf("the monitor published an invalid JobFinished: %v", err)
			}
			_, _ = s.sqs.DeleteMessage(context.Background(), &sqs.DeleteMessageInput{QueueUrl: aws.String(s.results), ReceiptHandle: m.ReceiptHandle})
			return jf
		}
	}
	s.t.Fatalf("no JobFinished within %s", timeout)
	return events.JobFinished{}
}

// noMore fails if another JobFinished arrives within d.
func (s *stack) noMore(d time.Duration) {
	s.t.Helper()
	out, err := s.sqs.ReceiveMessage(context.Background(), &sqs.ReceiveMessageInput{QueueUrl: aws.String(s.results), MaxNumberOfMessages: 10, WaitTimeSeconds: int32(d / time.Second)})
	if err != nil {
		s.t.Fatal(err)
	}
	if len(out.Messages) > 0 {
		s.t.Errorf("a second JobFinished: %s", aws.ToString(out.Messages[0].Body))
	}
}

// dlq receives the messages in the DLQ of one of the monitor's queues.
func (s *stack) dlq(queue string, wait int32) []sqstypes.Message {
	s.t.Helper()
	url, err := s.sqs.GetQueueUrl(context.Background(), &sqs.GetQueueUrlInput{QueueName: aws.String(bus.DLQName(queue))})
	if err != nil {
		s.t.Fatal(err)
	}
	out, err := s.sqs.ReceiveMessage(context.Background(), &sqs.ReceiveMessageInput{QueueUrl: url.QueueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: wait, MessageAttributeNames: []string{"All"}})
	if err != nil {
		s.t.Fatal(err)
	}
	return out.Messages
}

// dlqsEmpty fails if any of the monitor's DLQs holds a message. (It reads the depth: a
// receive without a wait time would long-poll for the queues' default 20 s.)
func (s *stack) dlqsEmpty() {
	s.t.Helper()
	for _, q := range s.topo.ServiceQueues(bus.Monitor) {
		url, err := s.sqs.GetQueueUrl(context.Background(), &sqs.GetQueueUrlInput{QueueName: aws.String(bus.DLQName(q))})
		if err != nil {
			s.t.Fatal(err)
		}
		attrs, err := s.sqs.GetQueueAttributes(context.Background(), &sqs.GetQueueAttributesInput{QueueUrl: url.QueueUrl,
			AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameApproximateNumberOfMessages}})
		if err != nil {
			s.t.Fatal(err)
		}
		if n := attrs.Attributes[string(sqstypes.QueueAttributeNameApproximateNumberOfMessages)]; n != "0" {
			for _, m := range s.dlq(q, 1) {
				s.t.Errorf("DLQ of %s holds %q (reason %s)", q, aws.ToString(m.Body), aws.ToString(m.MessageAttributes[bus.AttrError].StringValue))
			}
			s.t.Errorf("DLQ of %s holds %s messages", q, n)
		}
	}
}

func (s *stack) taskReported(job, fleet, instance, outcome string, i int) events.TaskReported {
	return events.TaskReported{Header: events.NewHeader(job, "corr-"+job, time.Now()), FleetID: fleet, InstanceID: instance,
		TaskID: fmt.Sprintf("in/file-%03d", i), Outcome: outcome, DurationMS: int64(10 + i)}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
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
	if jf.HostKey != c.hostKey || jf.KeyName != c.keyName || jf.Template != "test" {
		t.Errorf("JobFinished host key %q key name %q template %q", jf.HostKey, jf.KeyName, jf.Template)
	}
}

// TestMonitor runs the monitor against the local cloud: real instances reached over SSH
// with the pinned host key, real queues, timers, EC2 tags and CloudWatch metrics.
func TestMonitor(t *testing.T) {
	t.Parallel()
	c := newCloud(t)

	// Every workload exits 0 while tasks are reported, some after the fleet is
	// bootstrapped: succeeded, with the task totals from CloudWatch.
	t.Run("succeeded with task totals", func(t *testing.T) {
		t.Parallel()
		s := c.newStack(t, nil)
		fleet := c.launch(t, 2)
		for _, in := range fleet {
			c.start(t, in, map[string]string{"lines": "5"})
		}
		job := "job-ok-" + randomHex(t, 3)
		const succeeded, failed = 9, 3
		n := 0
		report := func(count int, outcome string) {
			for range count {
				s.publish(s.taskReported(job, job, fleet[n%2].ID, outcome, n))
				n++
			}
		}
		report(5, events.OutcomeSucceeded)
		report(2, events.OutcomeFailed)
		// The metrics reach CloudWatch on their own, batched.
		cw := metrics.NewClient(c.cfg)
		deadline := time.Now().Add(5 * time.Second)
		for {
			got, err := metrics.JobTotals(context.Background(), cw, job, time.Now().Add(-time.Hour), time.Now().Add(time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			if got == (metrics.Totals{Succeeded: 5, Failed: 2}) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("CloudWatch totals %+v, want 5 succeeded, 2 failed", got)
			}
			time.Sleep(50 * time.Millisecond)
		}

		s.publish(s.bootstrapped(job, time.Now().Add(time.Hour), fleet))
		report(succeeded-5, events.OutcomeSucceeded)
		report(failed-2, events.OutcomeFailed)

		jf := s.jobFinished(20 * time.Second)
		if jf.Outcome != events.OutcomeSucceeded || jf.FailingInstance != "" || jf.LogTail != nil || jf.JobID != job || jf.CorrelationID != "corr-"+job {
			t.Errorf("JobFinished %+v, want succeeded", jf)
		}
		if jf.TasksSucceeded != succeeded || jf.TasksFailed != failed {
			t.Errorf("JobFinished counts %d succeeded, %d failed; want %d, %d", jf.TasksSucceeded, jf.TasksFailed, succeeded, failed)
		}
		checkListsFleet(t, jf, c, fleet)
		for id, tags := range c.tags(t, ids(fleet)) {
			if tags[TagStage] != StageFinished {
				t.Errorf("%s has stage %q, want %q", id, tags[TagStage], StageFinished)
			}
		}
		// A duplicate FleetBootstrapped after the verdict: its check sees the finished
		// stage and stops, so no second JobFinished.
		s.publish(s.bootstrapped(job, time.Now().Add(time.Hour), fleet))
		s.noMore(4 * time.Second)
		s.dlqsEmpty()
	})

	// One instance's workload exits 3 after 120 lines: failed, with exactly its last 50.
	t.Run("failed with the log tail", func(t *testing.T) {
		t.Parallel()
		s := c.newStack(t, nil)
		fleet := c.launch(t, 3)
		c.start(t, fleet[0], map[string]string{"lines": "10"})
		c.start(t, fleet[1], map[string]string{"lines": "120", "code": "3"})
		c.start(t, fleet[2], map[string]string{"lines": "10", "wait": "30"})
		job := "job-fail-" + randomHex(t, 3)
		s.publish(s.bootstrapped(job, time.Now().Add(time.Hour), fleet))

		jf := s.jobFinished(20 * time.Second)
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

	// A workload still running: the lease is refreshed at each check, and past the
	// deadline plus grace the job times out with the running workload's tail.
	t.Run("lease refreshed then timed out", func(t *testing.T) {
		t.Parallel()
		s := c.newStack(t, func(cfg *Config) { cfg.Grace = time.Second })
		fleet := c.launch(t, 1)
		c.start(t, fleet[0], map[string]string{"lines": "3", "wait": "60"})
		job := "job-slow-" + randomHex(t, 3)
		deadline := time.Now().Add(4 * time.Second)
		s.publish(s.bootstrapped(job, deadline, fleet))

		var lease time.Time
		for wait := time.Now().Add(10 * time.Second); ; {
			raw := c.tags(t, ids(fleet))[fleet[0].ID][TagLeaseExpires]
			if l, err := time.Parse(time.RFC3339, raw); err == nil && l.After(time.Now().Add(50*time.Second)) {
				lease = l
				break
			}
			if time.Now().After(wait) {
				t.Fatalf("lease tag still %q: not refreshed", raw)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if lease.After(time.Now().Add(61 * time.Second)) {
			t.Errorf("lease %s, want about now + 1m", lease)
		}

		jf := s.jobFinished(20 * time.Second)
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
		fleet := c.launch(t, 2)
		c.start(t, fleet[0], map[string]string{"lines": "1", "wait": "30"})
		fleet[1].SSHEndpoint = "127.0.0.1:1" // nothing listens there
		job := "job-lost-" + randomHex(t, 3)
		s.publish(s.bootstrapped(job, time.Now().Add(time.Hour), fleet))
		jf := s.jobFinished(20 * time.Second)
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
		fleet := []events.InstanceResult{
			{ID: "i-0aaaaaaaaaaaaaaa1", SSHEndpoint: "127.0.0.1:2201", OK: true},
			{ID: "i-0aaaaaaaaaaaaaaa2", SSHEndpoint: "127.0.0.1:2202", Error: "step tools exited 127", Steps: []events.StepResult{
				{Name: "tools", ExitCode: 127, OutputTail: []string{"sh: 1: convert: not found"}}}},
		}
		job := "job-boot-" + randomHex(t, 3)
		start := time.Now()
		s.publish(s.bootstrapped(job, time.Now().Add(time.Hour), fleet))
		jf := s.jobFinished(10 * time.Second)
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

	// An invalid TaskReported goes to the DLQ with the reason, and counts nothing.
	t.Run("invalid TaskReported dead-lettered", func(t *testing.T) {
		t.Parallel()
		s := c.newStack(t, nil)
		bad := s.taskReported("job-bad", "job-bad", "i-0aaaaaaaaaaaaaaa1", "maybe", 1)
		body := []byte(fmt.Sprintf(`{"schema_version":1,"job_id":"job-bad","correlation_id":"c","time":%q,"fleet_id":"job-bad","instance_id":"i-0aaaaaaaaaaaaaaa1","task_id":"t","outcome":"maybe","duration_ms":1}`,
			time.Now().UTC().Format(time.RFC3339)))
		if err := s.pub.PublishBody(context.Background(), bad, body); err != nil {
			t.Fatal(err)
		}
		var msgs []sqstypes.Message
		for end := time.Now().Add(10 * time.Second); len(msgs) == 0 && time.Now().Before(end); {
			msgs = s.dlq(s.topo.QueueName(bus.Monitor, bus.TaskReported), 1)
		}
		if len(msgs) != 1 {
			t.Fatalf("DLQ holds %d messages, want the invalid report", len(msgs))
		}
		reason := aws.ToString(msgs[0].MessageAttributes[bus.AttrError].StringValue)
		if !strings.Contains(reason, "outcome") || !strings.Contains(reason, "maybe") {
			t.Errorf("DLQ reason %q does not say what is wrong", reason)
		}
		if aws.ToString(msgs[0].Body) != string(body) {
			t.Errorf("DLQ body %q, want the message unchanged", aws.ToString(msgs[0].Body))
		}
		time.Sleep(500 * time.Millisecond) // past a metrics flush
		got, err := metrics.JobTotals(context.Background(), metrics.NewClient(c.cfg), "job-bad", time.Now().Add(-time.Hour), time.Now().Add(time.Minute))
		if err != nil || got != (metrics.Totals{}) {
			t.Errorf("the invalid report was counted: %+v, %v", got, err)
		}
	})
}
