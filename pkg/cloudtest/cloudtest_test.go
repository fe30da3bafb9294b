package cloudtest_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// recorder is a testing.TB whose Fatal, Skip and Error are recorded instead of ending the
// real test, so the helpers' failures can be checked.
type recorder struct {
	testing.TB
	fatal, skip, errs string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Fatal(args ...any) { r.fatal = fmt.Sprint(args...); runtime.Goexit() }

func (r *recorder) Skip(args ...any) { r.skip = fmt.Sprint(args...); runtime.Goexit() }

func (r *recorder) Errorf(format string, args ...any) { r.errs += fmt.Sprintf(format, args...) }

// failure runs f with a recorder standing in for t and returns it once f returned or
// stopped the (fake) test.
func failure(t *testing.T, f func(tb testing.TB)) *recorder {
	t.Helper()
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r
}

func taskReported(job string) events.TaskReported {
	return events.TaskReported{Header: events.NewHeader(job, "corr-"+job, time.Now()), FleetID: job,
		InstanceID: "i-0123456789abcdef0", TaskID: "in/a.txt", Outcome: events.OutcomeSucceeded}
}

// TestStack publishes on a stack and reads the events back from a test queue: the job
// filter, the one-at-a-time check and the timeout of NextEvent.
func TestStack(t *testing.T) {
	t.Parallel()
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	if err := s.Topology.Validate(); err != nil {
		t.Fatalf("NewStack's topology: %v", err)
	}
	q := s.Subscribe(t, bus.TaskReported)

	s.Publish(t, taskReported("job-other"))
	s.Publish(t, taskReported("job-a"))
	if got := cloudtest.NextEvent(t, s.SQS, q, "job-a", 10*time.Second, events.DecodeTaskReported); got.JobID != "job-a" || got.TaskID != "in/a.txt" {
		t.Errorf("NextEvent = %+v, want job-a's report", got)
	}

	r := failure(t, func(tb testing.TB) {
		cloudtest.NextEvent(tb, s.SQS, q, "job-none", 1500*time.Millisecond, events.DecodeTaskReported)
	})
	if r.fatal != "no TaskReported of job-none within 1.5s" {
		t.Errorf("NextEvent with nothing to receive: %q", r.fatal)
	}

	// Two events of a job in one batch: sent at once, received together.
	for range 2 {
		s.Publish(t, taskReported("job-twice"))
	}
	time.Sleep(200 * time.Millisecond)
	r = failure(t, func(tb testing.TB) {
		cloudtest.NextEvent(tb, s.SQS, q, "job-twice", 10*time.Second, events.DecodeTaskReported)
	})
	if r.fatal != "2 TaskReported of job-twice at once, want one" {
		t.Errorf("NextEvent with a duplicate: %q", r.fatal)
	}

	// A message that is not the event fails the test, naming the queue and the body.
	if _, err := s.SQS.SendMessage(t.Context(), &sqs.SendMessageInput{QueueUrl: aws.String(q), MessageBody: aws.String(`{"nope":1}`)}); err != nil {
		t.Fatal(err)
	}
	r = failure(t, func(tb testing.TB) {
		cloudtest.Events(tb, s.SQS, q, "", 1, 10*time.Second, events.DecodeTaskReported)
	})
	if !strings.HasPrefix(r.fatal, "an invalid TaskReported on "+q) || !strings.HasSuffix(r.fatal, `{"nope":1}`) {
		t.Errorf("Events with an invalid message: %q", r.fatal)
	}
}

// TestDeadLetters reads a DLQ's messages with their reason, and fails for a missing job.
func TestDeadLetters(t *testing.T) {
	t.Parallel()
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	dlq := bus.DLQName(s.Topology.QueueName(bus.Monitor, bus.TaskReported))
	if n := cloudtest.QueueDepth(t, s.SQS, dlq); n != 0 {
		t.Fatalf("new DLQ depth %d", n)
	}
	for _, job := range []string{"job-1", "job-2", "job-2"} {
		if _, err := s.SQS.SendMessage(t.Context(), &sqs.SendMessageInput{
			QueueUrl: aws.String(cloudtest.QueueURL(t, s.SQS, dlq)), MessageBody: aws.String("body of " + job),
			MessageAttributes: map[string]sqstypes.MessageAttributeValue{
				bus.AttrJobID: {DataType: aws.String("String"), StringValue: aws.String(job)},
				bus.AttrError: {DataType: aws.String("String"), StringValue: aws.String("bad " + job)},
			},
		}); err != nil {
			t.Fatal(err)
		}
	}
	if n := cloudtest.QueueDepth(t, s.SQS, dlq); n != 3 {
		t.Errorf("DLQ depth %d, want 3", n)
	}
	got := cloudtest.DeadLetters(t, s.SQS, dlq, 10*time.Second, "job-1", "job-2")
	if len(got["job-1"]) != 1 || got["job-1"][0] != (cloudtest.DeadLetter{Body: "body of job-1", Reason: "bad job-1"}) {
		t.Errorf("job-1: %+v", got["job-1"])
	}
	if len(got["job-2"]) < 1 || got["job-2"][0] != (cloudtest.DeadLetter{Body: "body of job-2", Reason: "bad job-2"}) {
		t.Errorf("job-2: %+v", got["job-2"])
	}

	r := failure(t, func(tb testing.TB) { cloudtest.DeadLetters(tb, s.SQS, dlq, time.Second, "job-3") })
	if !strings.HasPrefix(r.fatal, "[job-3] not in "+dlq) {
		t.Errorf("DeadLetters of a missing job: %q", r.fatal)
	}
}

// TestLaunch launches instances that hold the host key and accept the key pair's key.
func TestLaunch(t *testing.T) {
	t.Parallel()
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	key := cloudtest.NewKeyPair(t, s.EC2, s.Topology.Prefix+"-login")
	hk := cloudtest.NewHostKey(t)
	insts := cloudtest.Launch(t, s.EC2, 2, cloudtest.LaunchSpec{KeyName: key.Name, UserData: hk.UserData, Tags: map[string]string{"sortie:job-id": "job-l"}})
	if len(insts) != 2 {
		t.Fatalf("%d instances, want 2", len(insts))
	}
	described := cloudtest.DescribeInstances(t, s.EC2, &ec2.DescribeInstancesInput{InstanceIds: []string{insts[0].ID, insts[1].ID}})
	for i, in := range insts {
		if in.InstanceType != "t3.micro" || in.PrivateIP == "" || in.LaunchedAt.IsZero() {
			t.Errorf("instance %d: %+v", i, in)
		}
		if tg := cloudtest.Tags(described[i]); tg["sortie:job-id"] != "job-l" || tg[tags.SSHEndpoint] == "" {
			t.Errorf("instance %d tg %v", i, tg)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		c, err := remote.Dial(ctx, remote.DialConfig{Addr: in.SSHEndpoint, User: "sortie", Signer: key.Signer, HostKey: hk.Public})
		if err != nil {
			cancel()
			t.Fatalf("dialing %s with the pinned host key: %v", in.ID, err)
		}
		res, err := c.Run(ctx, "echo up", nil)
		c.Close()
		cancel()
		if err != nil || string(res.Stdout) != "up\n" {
			t.Errorf("%s: %q, %v", in.ID, res.Stdout, err)
		}
	}
}

func TestEventually(t *testing.T) {
	t.Parallel()
	n := 0
	cloudtest.Eventually(t, time.Second, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	r := failure(t, func(tb testing.TB) {
		cloudtest.Eventually(tb, 50*time.Millisecond, func() error { return errors.New("never") })
	})
	if r.fatal != "after 50ms: never" {
		t.Errorf("Eventually that never passes: %q", r.fatal)
	}
}

func TestMissingTool(t *testing.T) {
	t.Setenv(cloudtest.EnvRequireInterop, "")
	if r := failure(t, func(tb testing.TB) { cloudtest.MissingTool(tb, "no sshd") }); r.skip != "no sshd" || r.fatal != "" {
		t.Errorf("without %s: skip %q fatal %q, want a skip", cloudtest.EnvRequireInterop, r.skip, r.fatal)
	}
	t.Setenv(cloudtest.EnvRequireInterop, "1")
	if r := failure(t, func(tb testing.TB) { cloudtest.MissingTool(tb, "no sshd") }); r.fatal == "" || r.skip != "" {
		t.Errorf("with %s=1: skip %q fatal %q, want a failure", cloudtest.EnvRequireInterop, r.skip, r.fatal)
	}
}

func TestUntar(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, h := range []*tar.Header{
		{Name: "./.sortie/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./.sortie/a.log", Typeflag: tar.TypeReg, Mode: 0o600, Size: 5},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			_, _ = tw.Write([]byte("hello"))
		}
	}
	_ = tw.Close()
	_ = zw.Close()
	files := cloudtest.Untar(t, buf.Bytes())
	if len(files) != 1 || files[".sortie/a.log"] != "hello" {
		t.Errorf("Untar = %q, want the one regular file", files)
	}
	for name, data := range map[string][]byte{"not gzip": []byte("plain"), "truncated": buf.Bytes()[:buf.Len()-12]} {
		if r := failure(t, func(tb testing.TB) { cloudtest.Untar(tb, data) }); r.fatal == "" {
			t.Errorf("Untar of %s archive passed", name)
		}
	}
}

func TestFreeAddr(t *testing.T) {
	t.Parallel()
	addr := cloudtest.FreeAddr(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	_, err := remote.Dial(ctx, remote.DialConfig{Addr: addr, User: "x", Signer: cloudtest.NewSigner(t), HostKey: cloudtest.NewSigner(t).PublicKey()})
	if err == nil {
		t.Fatalf("dialed %s: something listens there", addr)
	}
}
