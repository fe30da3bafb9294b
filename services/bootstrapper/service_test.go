package bootstrapper_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/infra"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/services/bootstrapper"
)

// TestBootstrapper runs the bootstrapper against the real local cloud: real instances
// (SSH hosts running /bin/sh), real SNS/SQS messages, a real presigned S3 fetch.
func TestBootstrapper(t *testing.T) {
	e := newEnv(t)
	out := e.subscribe(bus.FleetBootstrapped)
	e.start()

	hostKey, userData := newHostKey(t)

	// Every step of recipe "test" on three instances; step "check" fails on the second.
	insts := e.launch(3, userData)
	ev := e.fleetLaunched("job-main", hostKey, insts)
	ev.Params["fail_on"] = insts[1].ID
	e.publish(ev)
	got := receive(t, e, out, "job-main")

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
			want := fmt.Sprintf("SORTIE_JOB_ID=job-main\nSORTIE_CORRELATION_ID=corr-job-main\nSORTIE_FLEET_ID=job-main\nSORTIE_INSTANCE_ID=%s\nSORTIE_PREFIX=%s\n", in.ID, e.topo.Prefix)
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
			log, _ := os.ReadFile(e.instanceFile(insts[i].ID, recipe.LogPath("worker")))
			if string(log) != "working\n" {
				t.Errorf("worker log %q", log)
			}
		}
	})

	t.Run("bootstrapped instances tagged", func(t *testing.T) {
		stages := e.stageTags(insts)
		if stages[insts[0].ID] != "bootstrapped" || stages[insts[2].ID] != "bootstrapped" || stages[insts[1].ID] != "" {
			t.Fatalf("sortie:stage tags %v, want bootstrapped on the healthy instances only", stages)
		}
	})

	t.Run("event carries the fleet's fields", func(t *testing.T) {
		if got.FleetID != ev.FleetID || got.Recipe != ev.Recipe || got.Template != ev.Template ||
			got.HostKey != ev.HostKey || got.KeyName != ev.KeyName || !got.DeadlineAt.Equal(ev.DeadlineAt) ||
			got.CorrelationID != ev.CorrelationID {
			t.Fatalf("FleetBootstrapped %+v does not carry FleetLaunched %+v", got, ev)
		}
	})

	t.Run("redelivery runs no step again", func(t *testing.T) {
		e.publish(ev)
		again := receive(t, e, out, "job-main")
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
		_, otherUserData := newHostKey(t)
		good := e.launch(1, userData)
		impostor := e.launch(1, otherUserData)
		ev := e.fleetLaunched("job-hostkey", hostKey, append(good, impostor...))
		e.publish(ev)
		got := receive(t, e, out, "job-hostkey")
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
		e.publish(bad)
		garbage := e.fleetLaunched("job-garbage", hostKey, insts[:1])
		if err := e.pub.PublishBody(context.Background(), garbage, []byte(`{"schema_version":1,`)); err != nil {
			t.Fatal(err)
		}
		reasons := e.dlqReasons(bus.DLQName(e.topo.QueueName(bus.Bootstrapper, bus.FleetLaunched)), 2)
		if !strings.Contains(reasons["job-badrecipe"], `unknown recipe "nope"`) {
			t.Errorf("DLQ reason for the unknown recipe: %q", reasons["job-badrecipe"])
		}
		if !strings.Contains(reasons["job-garbage"], "malformed JSON") {
			t.Errorf("DLQ reason for the garbage body: %q", reasons["job-garbage"])
		}
	})

	t.Run("no presigned URL in any log line", func(t *testing.T) {
		logs := e.logs.String()
		if !strings.Contains(logs, "running step") {
			t.Fatal("the debug log has no step lines: the check would prove nothing")
		}
		if strings.Contains(logs, "X-Amz-Signature") || strings.Contains(logs, "X-Amz-Credential") {
			t.Fatal("a presigned URL reached the logs")
		}
	})
}

const toolScript = "#!/bin/sh\necho tool ok\n"

// env is one test's local cloud, stack and running bootstrapper.
type env struct {
	t       *testing.T
	cloud   *localcloud.Cloud
	aws     aws.Config
	topo    bus.Topology
	ec2     *ec2.Client
	sqs     *sqs.Client
	pub     *bus.Publisher
	keyName string
	keyPath string
	login   ssh.Signer
	fetcher string
	logs    *syncBuffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	fetcher := recipe.FetcherCurl
	if _, err := exec.LookPath("curl"); err != nil {
		fetcher = recipe.FetcherWget
		if _, err := exec.LookPath("wget"); err != nil {
			interop(t, "neither curl nor wget is installed: the fetch step cannot run")
		}
	}
	cloud, err := localcloud.New(localcloud.Options{Addr: "127.0.0.1:0", BootDelay: 30 * time.Millisecond, ShutdownDelay: 10 * time.Millisecond, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cloud.Close() })
	cfg := awsx.ForEndpoint(cloud.URL())
	ctx := context.Background()
	topo := bus.Topology{Prefix: "bt" + strings.ToLower(rand.Text()[:8])}
	if _, err := infra.Up(ctx, infra.NewClients(cfg), topo); err != nil {
		t.Fatalf("infra up: %v", err)
	}
	e := &env{t: t, cloud: cloud, aws: cfg, topo: topo, ec2: ec2.NewFromConfig(cfg), sqs: sqs.NewFromConfig(cfg), fetcher: fetcher, logs: &syncBuffer{}}

	e.keyName = topo.Prefix + "-login"
	kp, err := e.ec2.CreateKeyPair(ctx, &ec2.CreateKeyPairInput{KeyName: aws.String(e.keyName), KeyType: ec2types.KeyTypeEd25519})
	if err != nil {
		t.Fatalf("CreateKeyPair: %v", err)
	}
	e.keyPath = filepath.Join(t.TempDir(), "login.pem")
	if err := os.WriteFile(e.keyPath, []byte(aws.ToString(kp.KeyMaterial)), 0o600); err != nil {
		t.Fatal(err)
	}
	if e.login, err = ssh.ParsePrivateKey([]byte(aws.ToString(kp.KeyMaterial))); err != nil {
		t.Fatal(err)
	}

	s3c := s3.NewFromConfig(cfg, awsx.S3Options(cfg))
	if _, err := s3c.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(topo.BucketName()), Key: aws.String("tools/tool.sh"), Body: strings.NewReader(toolScript),
	}); err != nil {
		t.Fatalf("PutObject: %v", err)
	}
	if e.pub, err = bus.NewPublisher(bus.PublisherConfig{Topology: topo, AWS: cfg}); err != nil {
		t.Fatal(err)
	}
	return e
}

// interop skips a test that needs a tool a bare machine may lack, or fails it in CI.
func interop(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("SORTIE_REQUIRE_INTEROP") == "1" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// start runs the bootstrapper until the test ends.
func (e *env) start() {
	t := e.t
	t.Helper()
	ops, err := opsconfig.Load("testdata/ops.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := bootstrapper.Config{
		Base:        service.Base{Prefix: e.topo.Prefix},
		SSHKey:      e.keyPath,
		DialTimeout: 10 * time.Second,
		StepTimeout: 30 * time.Second,
		Fetcher:     e.fetcher,
	}
	deps := service.Deps{
		AWS: e.aws, Ops: ops, Publisher: e.pub,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- bootstrapper.Run(ctx, cfg, deps) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after its context was cancelled")
		}
		if t.Failed() {
			t.Logf("bootstrapper logs:\n%s", e.logs.String())
		}
	})
}

// newHostKey returns a fresh ed25519 host key's authorized_keys line and the cloud-init
// user data that installs it, as the provisioner builds it.
func newHostKey(t *testing.T) (authorized, userData string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	authorized = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	var b strings.Builder
	b.WriteString("#cloud-config\nssh_keys:\n  ed25519_private: |\n")
	for _, l := range strings.Split(strings.TrimSpace(string(pem.EncodeToMemory(block))), "\n") {
		b.WriteString("    " + l + "\n")
	}
	b.WriteString("  ed25519_public: " + authorized + "\n")
	return authorized, b.String()
}

// launch runs n instances with the user data and waits until they are running with an
// SSH endpoint.
func (e *env) launch(n int, userData string) []events.Instance {
	t := e.t
	t.Helper()
	ctx := context.Background()
	out, err := e.ec2.RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId: aws.String("ami-0123456789abcdef0"), InstanceType: ec2types.InstanceTypeT3Micro,
		MinCount: aws.Int32(int32(n)), MaxCount: aws.Int32(int32(n)), KeyName: aws.String(e.keyName),
		UserData: aws.String(base64.StdEncoding.EncodeToString([]byte(userData))),
	})
	if err != nil {
		t.Fatalf("RunInstances: %v", err)
	}
	var ids []string
	for _, in := range out.Instances {
		ids = append(ids, aws.ToString(in.InstanceId))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		desc, err := e.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: ids})
		if err != nil {
			t.Fatal(err)
		}
		var insts []events.Instance
		for _, r := range desc.Reservations {
			for _, in := range r.Instances {
				ep := tag(in.Tags, localcloud.SSHEndpointTag)
				if in.State.Name != ec2types.InstanceStateNameRunning || ep == "" {
					continue
				}
				insts = append(insts, events.Instance{
					ID: aws.ToString(in.InstanceId), InstanceType: string(in.InstanceType),
					PrivateIP: aws.ToString(in.PrivateIpAddress), SSHEndpoint: ep, LaunchedAt: aws.ToTime(in.LaunchTime),
				})
			}
		}
		if len(insts) == n {
			return insts
		}
		if time.Now().After(deadline) {
			t.Fatalf("instances %v not running after 10s", ids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func tag(tags []ec2types.Tag, key string) string {
	for _, tg := range tags {
		if aws.ToString(tg.Key) == key {
			return aws.ToString(tg.Value)
		}
	}
	return ""
}

func (e *env) fleetLaunched(jobID, hostKey string, insts []events.Instance) events.FleetLaunched {
	now := time.Now().UTC()
	return events.FleetLaunched{
		Header:       events.NewHeader(jobID, "corr-"+jobID, now),
		FleetID:      jobID,
		PlanRevision: 1,
		Template:     "test",
		Recipe:       "test",
		Params:       map[string]string{"bucket": e.topo.BucketName()},
		DeadlineAt:   now.Add(time.Hour).Truncate(time.Second),
		KeyName:      e.keyName,
		HostKey:      hostKey,
		Instances:    insts,
	}
}

func (e *env) publish(ev events.Event) {
	e.t.Helper()
	if err := e.pub.Publish(context.Background(), ev); err != nil {
		e.t.Fatalf("publishing: %v", err)
	}
}

func (e *env) instanceFile(id, rel string) string {
	return filepath.Join(e.cloud.InstanceDir(id), rel)
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
	c, err := remote.Dial(ctx, remote.DialConfig{Addr: in.SSHEndpoint, User: "worker", Signer: e.login, HostKey: pub})
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
	desc, err := e.ec2.DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{InstanceIds: ids})
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range desc.Reservations {
		for _, in := range r.Instances {
			out[aws.ToString(in.InstanceId)] = tag(in.Tags, bootstrapper.TagStage)
		}
	}
	return out
}

// subscribe creates a queue subscribed (raw delivery) to the event type's topic.
func (e *env) subscribe(eventType string) string {
	t := e.t
	t.Helper()
	ctx := context.Background()
	q, err := e.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(e.topo.Prefix + "-test-" + strings.ToLower(eventType))})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := e.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: q.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
	if err != nil {
		t.Fatal(err)
	}
	snsc := sns.NewFromConfig(e.aws)
	topic, err := snsc.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(e.topo.TopicName(eventType))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snsc.Subscribe(ctx, &sns.SubscribeInput{
		TopicArn: topic.TopicArn, Protocol: aws.String("sqs"), Endpoint: aws.String(attrs.Attributes["QueueArn"]),
		Attributes: map[string]string{"RawMessageDelivery": "true"},
	}); err != nil {
		t.Fatal(err)
	}
	return aws.ToString(q.QueueUrl)
}

// receive waits for the next FleetBootstrapped of a job on the test queue.
func receive(t *testing.T, e *env, queueURL, jobID string) events.FleetBootstrapped {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		out, err := e.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(queueURL), MaxNumberOfMessages: 10, WaitTimeSeconds: 1})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range out.Messages {
			ev, err := events.DecodeFleetBootstrapped([]byte(aws.ToString(m.Body)))
			if err != nil {
				t.Fatalf("the bootstrapper published an invalid FleetBootstrapped: %v", err)
			}
			if _, err := e.sqs.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(queueURL), ReceiptHandle: m.ReceiptHandle}); err != nil {
				t.Fatal(err)
			}
			if ev.JobID == jobID {
				return ev
			}
		}
	}
	t.Fatalf("no FleetBootstrapped for %s within 60s; logs:\n%s", jobID, e.logs.String())
	return events.FleetBootstrapped{}
}

// dlqReasons reads n messages from a DLQ and returns their dead-letter reasons by job id.
func (e *env) dlqReasons(dlq string, n int) map[string]string {
	t := e.t
	t.Helper()
	ctx := context.Background()
	url, err := e.sqs.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(dlq)})
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]string{}
	deadline := time.Now().Add(30 * time.Second)
	for len(reasons) < n && time.Now().Before(deadline) {
		out, err := e.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: url.QueueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1, MessageAttributeNames: []string{"All"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range out.Messages {
			job := aws.ToString(m.MessageAttributes[bus.AttrJobID].StringValue)
			reasons[job] = aws.ToString(m.MessageAttributes[bus.AttrError].StringValue)
		}
	}
	if len(reasons) < n {
		t.Fatalf("%d messages in %s, want %d", len(reasons), dlq, n)
	}
	return reasons
}

func stepSummary(r events.InstanceResult) string {
	var parts []string
	for _, s := range r.Steps {
		parts = append(parts, fmt.Sprintf("%s:%d", s.Name, s.ExitCode))
	}
	return strings.Join(parts, " ")
}

// syncBuffer collects the service's logs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
