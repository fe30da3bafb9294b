package reaper_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
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
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/services/reaper"
)

// TestReaper runs the reaper against the real local cloud: real instances (SSH hosts),
// real S3 objects, real SNS/SQS messages and its real sweep timer.
func TestReaper(t *testing.T) {
	e := newEnv(t)
	out := e.subscribe(bus.FleetTerminated)
	hostKey, userData := newHostKey(t)
	_, otherUserData := newHostKey(t)
	live := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)

	// The fleet: A and B reachable, C listed with an endpoint nobody answers on, D tagged
	// with the fleet (an earlier plan revision, another host key) but not in the event.
	fleet := e.launch(3, userData, map[string]string{reaper.TagJobID: "job-reap", reaper.TagFleet: "job-reap", reaper.TagLeaseExpires: live})
	extra := e.launch(1, otherUserData, map[string]string{reaper.TagJobID: "job-reap", reaper.TagFleet: "job-reap", reaper.TagLeaseExpires: live})
	a, b, c, d := fleet[0], fleet[1], fleet[2], extra[0]
	// The sweep's instances: an expired lease, a live one, none (launched now), garbage.
	sweepTags := func(lease string) map[string]string {
		m := map[string]string{reaper.TagJobID: "job-sweep", reaper.TagFleet: "job-sweep"}
		if lease != "" {
			m[reaper.TagLeaseExpires] = lease
		}
		return m
	}
	expired := e.launch(1, userData, sweepTags(time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)))[0]
	leased := e.launch(1, userData, sweepTags(live))[0]
	unleased := e.launch(1, userData, sweepTags(""))[0]
	garbage := e.launch(1, userData, sweepTags("next tuesday"))[0]
	for _, in := range []events.InstanceRef{a, b, c, d, expired} {
		e.writeLog(in.ID, "log of "+in.ID+"\n")
	}

	e.start()

	bogus := closedPort(t)
	ev := events.JobFinished{
		Header:          events.NewHeader("job-reap", "corr-reap", time.Now()),
		FleetID:         "job-reap",
		Template:        "test",
		Outcome:         events.OutcomeFailed,
		Reason:          "worker exited with status 1 on " + b.ID,
		FailingInstance: b.ID,
		LogTail:         []string{"boom"},
		Instances:       []events.InstanceRef{a, b, {ID: c.ID, SSHEndpoint: bogus}},
		HostKey:         hostKey,
		KeyName:         e.keyName,
		TasksSucceeded:  10,
		TasksFailed:     1,
	}
	e.publish(ev)
	got := receive(t, e, out, "job-reap")
	allIDs := sortedIDs(a, b, c, d)

	t.Run("every instance terminated", func(t *testing.T) {
		if !slices.Equal(got.TerminatedInstanceIDs, allIDs) {
			t.Fatalf("TerminatedInstanceIDs = %v, want %v (the unreachable one and the unlisted one included)", got.TerminatedInstanceIDs, allIDs)
		}
		for id, st := range e.states(allIDs...) {
			if st != ec2types.InstanceStateNameTerminated {
				t.Errorf("instance %s is %s, want terminated", id, st)
			}
		}
	})

	t.Run("archives are valid tar.gz with the worker log, SSE aws:kms", func(t *testing.T) {
		want := sortedIDs(a, b, d) // C could not be reached
		var ids []string
		for _, arch := range got.Archives {
			ids = append(ids, arch.InstanceID)
			if arch.Bucket != e.topo.BucketName() || arch.Key != "logs/job-reap/"+arch.InstanceID+".tar.gz" {
				t.Errorf("archive %+v: wrong place", arch)
			}
			body, head := e.download(arch.Key)
			if head.ServerSideEncryption != "aws:kms" {
				t.Errorf("%s: SSE %q, want aws:kms", arch.Key, head.ServerSideEncryption)
			}
			if aws.ToInt64(head.ContentLength) != arch.SizeBytes || int64(len(body)) != arch.SizeBytes {
				t.Errorf("%s: %d bytes stored, %d downloaded, event says %d", arch.Key, aws.ToInt64(head.ContentLength), len(body), arch.SizeBytes)
			}
			files := untar(t, body)
			if log := files[".sortie/worker/worker.log"]; log != "log of "+arch.InstanceID+"\n" {
				t.Errorf("%s: worker.log = %q", arch.Key, log)
			}
		}
		if !slices.Equal(ids, want) {
			t.Fatalf("archives of %v, want %v", ids, want)
		}
		if !strings.Contains(e.logs.String(), "logs not archived; terminating the instance anyway") {
			t.Error("the unreachable instance's missing archive was not logged")
		}
	})

	t.Run("outcome and instance-seconds", func(t *testing.T) {
		if got.Outcome != events.OutcomeFailed || got.Reason != ev.Reason || got.FleetID != "job-reap" || got.CorrelationID != "corr-reap" {
			t.Fatalf("FleetTerminated %+v does not carry JobFinished's outcome", got)
		}
		var upper float64
		for _, l := range e.launchTimes(allIDs...) {
			upper += time.Since(l).Seconds()
		}
		if got.InstanceSeconds <= 0 || got.InstanceSeconds > upper {
			t.Fatalf("InstanceSeconds = %v, want within (0, %v]", got.InstanceSeconds, upper)
		}
	})

	t.Run("duplicate JobFinished: same archives, nothing new", func(t *testing.T) {
		start := time.Now()
		e.publish(ev)
		again := receive(t, e, out, "job-reap")
		if !slices.Equal(again.Archives, got.Archives) {
			t.Errorf("archives %+v, want %+v", again.Archives, got.Archives)
		}
		if !slices.Equal(again.TerminatedInstanceIDs, got.TerminatedInstanceIDs) || again.InstanceSeconds != got.InstanceSeconds {
			t.Errorf("terminated %v / %v s, want %v / %v s", again.TerminatedInstanceIDs, again.InstanceSeconds, got.TerminatedInstanceIDs, got.InstanceSeconds)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("the duplicate took %s", took)
		}
	})

	t.Run("sweep terminates the expired lease only", func(t *testing.T) {
		deadline := time.Now().Add(20 * time.Second)
		for e.states(expired.ID)[expired.ID] == ec2types.InstanceStateNameRunning {
			if time.Now().After(deadline) {
				t.Fatalf("instance %s with an expired lease still running after 20s", expired.ID)
			}
			time.Sleep(100 * time.Millisecond)
		}
		// Let at least two more sweeps pass over the others.
		sweeps := e.sweeps()
		for e.sweeps() < sweeps+2 {
			if time.Now().After(deadline.Add(10 * time.Second)) {
				t.Fatal("the sweep timer stopped")
			}
			time.Sleep(100 * time.Millisecond)
		}
		for id, st := range e.states(leased.ID, unleased.ID, garbage.ID) {
			if st != ec2types.InstanceStateNameRunning {
				t.Errorf("instance %s with a live lease is %s", id, st)
			}
		}
		body, _ := e.download("logs/job-sweep/" + expired.ID + ".tar.gz")
		if log := untar(t, body)[".sortie/worker/worker.log"]; log != "log of "+expired.ID+"\n" {
			t.Errorf("the swept instance's archive holds %q", log)
		}
	})
}

// env is one test's local cloud, stack and running reaper.
type env struct {
	t       *testing.T
	cloud   *localcloud.Cloud
	aws     aws.Config
	topo    bus.Topology
	ec2     *ec2.Client
	s3      *s3.Client
	sqs     *sqs.Client
	pub     *bus.Publisher
	keyName string
	keyPath string
	logs    *syncBuffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	cloud, err := localcloud.New(localcloud.Options{Addr: "127.0.0.1:0", BootDelay: 30 * time.Millisecond, ShutdownDelay: 50 * time.Millisecond, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cloud.Close() })
	cfg := awsx.ForEndpoint(cloud.URL())
	topo := bus.Topology{Prefix: "rp" + strings.ToLower(rand.Text()[:8])}
	if _, err := infra.Up(context.Background(), infra.NewClients(cfg), topo); err != nil {
		t.Fatalf("infra up: %v", err)
	}
	e := &env{t: t, cloud: cloud, aws: cfg, topo: topo, ec2: ec2.NewFromConfig(cfg), s3: s3.NewFromConfig(cfg, awsx.S3Options(cfg)), sqs: sqs.NewFromConfig(cfg), logs: &syncBuffer{}}
	e.keyName = topo.Prefix + "-login"
	kp, err := e.ec2.CreateKeyPair(context.Background(), &ec2.CreateKeyPairInput{KeyName: aws.String(e.keyName), KeyType: ec2types.KeyTypeEd25519})
	if err != nil {
		t.Fatalf("CreateKeyPair: %v", err)
	}
	e.keyPath = filepath.Join(t.TempDir(), "login.pem")
	if err := os.WriteFile(e.keyPath, []byte(aws.ToString(kp.KeyMaterial)), 0o600); err != nil {
		t.Fatal(err)
	}
	if e.pub, err = bus.NewPublisher(bus.PublisherConfig{Topology: topo, AWS: cfg}); err != nil {
		t.Fatal(err)
	}
	return e
}

// start runs the reaper until the test ends, with short timeouts and a 1 s sweep.
func (e *env) start() {
	t := e.t
	t.Helper()
	ops, err := opsconfig.Load("testdata/ops.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := reaper.Config{
		Base:                service.Base{Prefix: e.topo.Prefix},
		SSHKey:              e.keyPath,
		ArchiveTimeout:      1500 * time.Millisecond,
		SweepInterval:       time.Second,
		SweepArchiveTimeout: 5 * time.Second,
		WaiterMinDelay:      100 * time.Millisecond,
		WaiterMaxDelay:      500 * time.Millisecond,
		TerminateTimeout:    20 * time.Second,
		PollWait:            time.Second,
	}
	deps := service.Deps{AWS: e.aws, Ops: ops, Publisher: e.pub,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reaper.Run(ctx, cfg, deps) }()
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
			t.Logf("reaper logs:\n%s", e.logs.String())
		}
	})
}

// sweeps counts the sweeps the reaper has run so far.
func (e *env) sweeps() int { return strings.Count(e.logs.String(), `"msg":"sweep"`) }

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

// launch runs n tagged instances and waits until they are running with an SSH endpoint.
func (e *env) launch(n int, userData string, tags map[string]string) []events.InstanceRef {
	t := e.t
	t.Helper()
	ctx := context.Background()
	var ts []ec2types.Tag
	for k, v := range tags {
		ts = append(ts, ec2types.Tag{Key: aws.String(k), Value: aws.String(v)})
	}
	run, err := e.ec2.RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId: aws.String("ami-0123456789abcdef0"), InstanceType: ec2types.InstanceTypeT3Micro,
		MinCount: aws.Int32(int32(n)), MaxCount: aws.Int32(int32(n)), KeyName: aws.String(e.keyName),
		UserData:          aws.String(base64.StdEncoding.EncodeToString([]byte(userData))),
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: ts}},
	})
	if err != nil {
		t.Fatalf("RunInstances: %v", err)
	}
	var ids []string
	for _, in := range run.Instances {
		ids = append(ids, aws.ToString(in.InstanceId))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		desc, err := e.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: ids})
		if err != nil {
			t.Fatal(err)
		}
		var refs []events.InstanceRef
		for _, r := range desc.Reservations {
			for _, in := range r.Instances {
				for _, tg := range in.Tags {
					if aws.ToString(tg.Key) == localcloud.SSHEndpointTag && in.State.Name == ec2types.InstanceStateNameRunning {
						refs = append(refs, events.InstanceRef{ID: aws.ToString(in.InstanceId), SSHEndpoint: aws.ToString(tg.Value)})
					}
				}
			}
		}
		if len(refs) == n {
			return refs
		}
		if time.Now().After(deadline) {
			t.Fatalf("instances %v not running after 10s", ids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// writeLog puts a worker log where the recipe's start step writes it.
func (e *env) writeLog(id, content string) {
	e.t.Helper()
	p := filepath.Join(e.cloud.InstanceDir(id), ".sortie/worker/worker.log")
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) describe(ids ...string) []ec2types.Instance {
	e.t.Helper()
	desc, err := e.ec2.DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{InstanceIds: ids})
	if err != nil {
		e.t.Fatal(err)
	}
	var out []ec2types.Instance
	for _, r := range desc.Reservations {
		out = append(out, r.Instances...)
	}
	return out
}

func (e *env) states(ids ...string) map[string]ec2types.InstanceStateName {
	out := map[string]ec2types.InstanceStateName{}
	for _, in := range e.describe(ids...) {
		out[aws.ToString(in.InstanceId)] = in.State.Name
	}
	return out
}

func (e *env) launchTimes(ids ...string) []time.Time {
	var out []time.Time
	for _, in := range e.describe(ids...) {
		out = append(out, aws.ToTime(in.LaunchTime))
	}
	return out
}

func (e *env) download(key string) ([]byte, *s3.HeadObjectOutput) {
	t := e.t
	t.Helper()
	ctx := context.Background()
	head, err := e.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(e.topo.BucketName()), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("HeadObject %s: %v", key, err)
	}
	obj, err := e.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(e.topo.BucketName()), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("GetObject %s: %v", key, err)
	}
	defer obj.Body.Close()
	body, err := io.ReadAll(obj.Body)
	if err != nil {
		t.Fatal(err)
	}
	return body, head
}

// untar reads a tar.gz completely (failing the test unless it is valid) and returns its
// regular files by name.
func untar(t *testing.T, data []byte) map[string]string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("archive is not gzip: %v", err)
	}
	tr := tar.NewReader(zr)
	files := map[string]string{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatalf("archive is not a valid tar: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("archive is not a valid tar: %v", err)
		}
		if h.Typeflag == tar.TypeReg {
			files[strings.TrimPrefix(h.Name, "./")] = string(b)
		}
	}
}

func (e *env) publish(ev events.Event) {
	e.t.Helper()
	if err := e.pub.Publish(context.Background(), ev); err != nil {
		e.t.Fatalf("publishing: %v", err)
	}
}

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

// receive waits for the next FleetTerminated of a job on the test queue.
func receive(t *testing.T, e *env, queueURL, jobID string) events.FleetTerminated {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		out, err := e.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(queueURL), MaxNumberOfMessages: 10, WaitTimeSeconds: 1})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range out.Messages {
			ev, err := events.DecodeFleetTerminated([]byte(aws.ToString(m.Body)))
			if err != nil {
				t.Fatalf("the reaper published an invalid FleetTerminated: %v", err)
			}
			if _, err := e.sqs.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(queueURL), ReceiptHandle: m.ReceiptHandle}); err != nil {
				t.Fatal(err)
			}
			if ev.JobID == jobID {
				return ev
			}
		}
	}
	t.Fatalf("no FleetTerminated for %s within 60s; logs:\n%s", jobID, e.logs.String())
	return events.FleetTerminated{}
}

// closedPort returns an address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func sortedIDs(refs ...events.InstanceRef) []string {
	var ids []string
	for _, r := range refs {
		ids = append(ids, r.ID)
	}
	slices.Sort(ids)
	return ids
}

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
