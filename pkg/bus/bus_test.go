package bus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
)

func jobSubmitted() events.JobSubmitted {
	return events.JobSubmitted{
		Header: events.Header{
			SchemaVersion: events.SchemaVersion,
			JobID:         "job-42",
			CorrelationID: "corr-42",
			Time:          time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		},
		Template:        "default",
		Profile:         "standard",
		Recipe:          "process-files",
		Work:            events.WorkSource{Count: 202},
		DeadlineSeconds: 600,
	}
}

// TestRoundTrip publishes an event to its SNS topic and sees it arrive, unchanged, at
// the consuming service's handler through the raw-delivery SQS subscription.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{})
	ev := jobSubmitted()
	want, err := events.Encode(ev)
	if err != nil {
		t.Fatalf("encoding the test event (has pkg/events changed?): %v", err)
	}

	type seen struct {
		m            *bus.Message
		job, corr    string
		loggerLogged bool
	}
	got := make(chan seen, 1)
	r, err := bus.NewRouter(e.routerConfig(bus.Planner))
	if err != nil {
		t.Fatal(err)
	}
	r.Handle(bus.JobSubmitted, func(ctx context.Context, m *bus.Message) error {
		bus.Logger(ctx).Info("planning")
		got <- seen{m: m, job: bus.JobID(ctx), corr: bus.CorrelationID(ctx)}
		return nil
	})
	stop := e.run(r)

	if err := e.publisher().Publish(context.Background(), ev); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	var s seen
	select {
	case s = <-got:
	case <-time.After(10 * time.Second):
		t.Fatalf("handler not called; logs:\n%s", e.logs)
	}
	m := s.m
	if !bytes.Equal(m.Payload, want) {
		t.Errorf("payload = %s, want %s", m.Payload, want)
	}
	if m.EventType != bus.JobSubmitted || m.JobID != "job-42" || m.CorrelationID != "corr-42" {
		t.Errorf("message type/job/correlation = %q/%q/%q, want JobSubmitted/job-42/corr-42", m.EventType, m.JobID, m.CorrelationID)
	}
	for k, v := range map[string]string{bus.AttrEventType: bus.JobSubmitted, bus.AttrJobID: "job-42", bus.AttrCorrelationID: "corr-42"} {
		if m.Attributes[k] != v {
			t.Errorf("attribute %s = %q, want %q", k, m.Attributes[k], v)
		}
	}
	if s.job != "job-42" || s.corr != "corr-42" {
		t.Errorf("ctx ids = %q/%q, want job-42/corr-42", s.job, s.corr)
	}
	if m.UUID == "" || m.ReceiveCount != 1 || m.Queue != e.topo.QueueName(bus.Planner, bus.JobSubmitted) {
		t.Errorf("uuid %q receive count %d queue %q, want a uuid, 1, the planner's queue", m.UUID, m.ReceiveCount, m.Queue)
	}
	lines := e.logs.lines("planning")
	if len(lines) != 1 || lines[0]["job_id"] != "job-42" || lines[0]["correlation_id"] != "corr-42" || lines[0]["event_type"] != bus.JobSubmitted {
		t.Errorf("handler's log lines = %v, want one with job_id, correlation_id and event_type", lines)
	}
	q := e.topo.QueueName(bus.Planner, bus.JobSubmitted)
	eventually(t, 5*time.Second, "handled message still in the queue", func() bool { return e.depth(q).total() == 0 })
	if err := stop(); err != nil {
		t.Errorf("Run returned %v after cancellation, want nil", err)
	}
}

// TestCorrelationFallbacks: ids missing from the attributes come from the event header;
// a message without any correlation id gets a generated one.
func TestCorrelationFallbacks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{})
	var c calls
	r, err := bus.NewRouter(e.routerConfig(bus.Planner))
	if err != nil {
		t.Fatal(err)
	}
	r.Handle(bus.JobSubmitted, func(ctx context.Context, m *bus.Message) error {
		c.add(m)
		return nil
	})
	e.run(r)
	url := e.queueURL(e.topo.QueueName(bus.Planner, bus.JobSubmitted))
	for _, body := range []string{`{"job_id":"job-h","correlation_id":"corr-h"}`, `{"job_id":"job-x"}`} {
		if _, err := e.sqs.SendMessage(context.Background(), &sqs.SendMessageInput{QueueUrl: aws.String(url), MessageBody: aws.String(body)}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "two messages handled", func() bool { return c.n() == 2 })
	byJob := map[string]*bus.Message{}
	for i := range 2 {
		m, _ := c.get(i)
		byJob[m.JobID] = m
	}
	if m := byJob["job-h"]; m == nil || m.CorrelationID != "corr-h" {
		t.Errorf("header ids not used: %+v", m)
	}
	if m := byJob["job-x"]; m == nil || len(m.CorrelationID) < 16 {
		t.Errorf("no correlation id generated: %+v", m)
	}
}

// TestPermanentErrorGoesToDLQ: a permanent error sends the message to its queue's DLQ
// at once, body unchanged, attributes kept plus the reason and source queue; the handler
// is called once and the message leaves the source queue.
func TestPermanentErrorGoesToDLQ(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		err        error
		wantReason string
	}{
		{"markedPermanent", bus.Permanent(errors.New("template gpu-xl is not defined")), "template gpu-xl is not defined"},
		{"invalidEvent", fmt.Errorf("decoding JobSubmitted: %w: job_id missing", events.ErrInvalid), "job_id missing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.createStack(stackOpts{})
			var c calls
			r, err := bus.NewRouter(e.routerConfig(bus.Planner))
			if err != nil {
				t.Fatal(err)
			}
			r.Handle(bus.JobSubmitted, func(ctx context.Context, m *bus.Message) error {
				c.add(m)
				return tc.err
			})
			stop := e.run(r)

			body := []byte(`{"job_id":"job-7","note":"kept as is"}`)
			if err := e.publisher().PublishBody(context.Background(), fakeEvent{bus.JobSubmitted, "job-7", "corr-7"}, body); err != nil {
				t.Fatalf("PublishBody: %v", err)
			}
			q := e.topo.QueueName(bus.Planner, bus.JobSubmitted)
			dlq := bus.DLQName(q)
			eventually(t, 10*time.Second, "message in the DLQ", func() bool { return e.depth(dlq).visible == 1 })
			time.Sleep(1500 * time.Millisecond) // a retry or redelivery would show by now
			if n := c.n(); n != 1 {
				t.Errorf("handler called %d times, want 1", n)
			}
			if d := e.depth(q); d.total() != 0 {
				t.Errorf("source queue holds %+v, want nothing (the original is acked)", d)
			}
			msgs := e.receiveAll(dlq)
			if len(msgs) != 1 {
				t.Fatalf("DLQ holds %d messages, want exactly 1", len(msgs))
			}
			got := msgs[0]
			if aws.ToString(got.Body) != string(body) {
				t.Errorf("DLQ body = %s, want %s", aws.ToString(got.Body), body)
			}
			attr := func(k string) string { return aws.ToString(got.MessageAttributes[k].StringValue) }
			if !strings.Contains(attr(bus.AttrError), tc.wantReason) {
				t.Errorf("%s = %q, want it to contain %q", bus.AttrError, attr(bus.AttrError), tc.wantReason)
			}
			m, _ := c.get(0)
			for k, v := range map[string]string{
				bus.AttrSourceQueue:       q,
				bus.AttrEventType:         bus.JobSubmitted,
				bus.AttrJobID:             "job-7",
				bus.AttrCorrelationID:     "corr-7",
				"_watermill_message_uuid": m.UUID,
			} {
				if attr(k) != v {
					t.Errorf("DLQ attribute %s = %q, want %q", k, attr(k), v)
				}
			}
			if n := len(e.logs.lines("permanent error: sending the message to its DLQ")); n != 1 {
				t.Errorf("logged the dead-lettering %d times, want 1", n)
			}
			if err := stop(); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
}

// TestWrongEventTypeGoesToDLQ: a message whose event_type is not its queue's is never
// handed to the handler.
func TestWrongEventTypeGoesToDLQ(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{})
	var c calls
	r, err := bus.NewRouter(e.routerConfig(bus.Planner))
	if err != nil {
		t.Fatal(err)
	}
	r.Handle(bus.JobSubmitted, func(ctx context.Context, m *bus.Message) error { c.add(m); return nil })
	e.run(r)
	q := e.topo.QueueName(bus.Planner, bus.JobSubmitted)
	_, err = e.sqs.SendMessage(context.Background(), &sqs.SendMessageInput{
		QueueUrl: aws.String(e.queueURL(q)), MessageBody: aws.String(`{}`),
		MessageAttributes: map[string]sqstypes.MessageAttributeValue{
			bus.AttrEventType: {DataType: aws.String("String"), StringValue: aws.String(bus.FleetPlanned)},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "message in the DLQ", func() bool { return e.depth(bus.DLQName(q)).visible == 1 })
	if c.n() != 0 {
		t.Errorf("handler called %d times for a message of another type", c.n())
	}
}

// TestTransientErrorRetried: transient errors are retried in process with backoff until
// the handler succeeds; nothing reaches the DLQ.
func TestTransientErrorRetried(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{})
	cfg := e.routerConfig(bus.Planner)
	cfg.Retry = bus.RetryPolicy{MaxRetries: 3, InitialInterval: 50 * time.Millisecond, Multiplier: 2, MaxInterval: time.Second}
	var c calls
	r, err := bus.NewRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Handle(bus.JobSubmitted, func(ctx context.Context, m *bus.Message) error {
		if c.add(m) < 3 {
			return errors.New("ec2: throttled")
		}
		return nil
	})
	stop := e.run(r)
	if err := e.publisher().PublishBody(context.Background(), fakeEvent{bus.JobSubmitted, "job-t", "corr-t"}, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	q := e.topo.QueueName(bus.Planner, bus.JobSubmitted)
	eventually(t, 10*time.Second, "message handled and deleted", func() bool { return c.n() >= 3 && e.depth(q).total() == 0 })
	time.Sleep(1200 * time.Millisecond)
	if n := c.n(); n != 3 {
		t.Errorf("handler called %d times, want 3 (two failures, one success)", n)
	}
	_, t0 := c.get(0)
	_, t1 := c.get(1)
	_, t2 := c.get(2)
	if t1.Sub(t0) < 50*time.Millisecond || t2.Sub(t1) < 100*time.Millisecond {
		t.Errorf("retry intervals %s, %s; want at least 50ms then 100ms", t1.Sub(t0), t2.Sub(t1))
	}
	for i := range 3 {
		if m, _ := c.get(i); m.ReceiveCount != 1 {
			t.Errorf("attempt %d saw receive count %d, want 1 (retried in process, not redelivered)", i, m.ReceiveCount)
		}
	}
	if d := e.depth(bus.DLQName(q)); d.total() != 0 {
		t.Errorf("DLQ holds %+v, want nothing", d)
	}
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestPanicRecoveredAndRetried: a panic is logged with its stack and retried like a
// transient error.
func TestPanicRecoveredAndRetried(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{})
	var c calls
	r, err := bus.NewRouter(e.routerConfig(bus.Planner))
	if err != nil {
		t.Fatal(err)
	}
	r.Handle(bus.JobSubmitted, func(ctx context.Context, m *bus.Message) error {
		if c.add(m) == 1 {
			panic("nil fleet template")
		}
		return nil
	})
	stop := e.run(r)
	if err := e.publisher().PublishBody(context.Background(), fakeEvent{bus.JobSubmitted, "job-p", "corr-p"}, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	q := e.topo.QueueName(bus.Planner, bus.JobSubmitted)
	eventually(t, 10*time.Second, "message handled and deleted", func() bool { return c.n() >= 2 && e.depth(q).total() == 0 })
	if n := c.n(); n != 2 {
		t.Errorf("handler called %d times, want 2", n)
	}
	lines := e.logs.lines("handler panicked")
	if len(lines) != 1 {
		t.Fatalf("logged %d panics, want 1; logs:\n%s", len(lines), e.logs)
	}
	stack, _ := lines[0]["stack"].(string)
	if lines[0]["panic"] != "nil fleet template" || !strings.Contains(stack, "TestPanicRecoveredAndRetried") || lines[0]["job_id"] != "job-p" {
		t.Errorf("panic log = %v, want the value, a stack through the handler and the job id", lines[0])
	}
	if d := e.depth(bus.DLQName(q)); d.total() != 0 {
		t.Errorf("DLQ holds %+v, want nothing", d)
	}
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestExhaustedRetriesLeftToRedrive: when in-process retries run out the message is
// nacked, SQS redelivers it, and the redrive policy finally dead-letters it.
func TestExhaustedRetriesLeftToRedrive(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{visibilityTimeout: 1, maxReceiveCount: 2})
	cfg := e.routerConfig(bus.Planner)
	cfg.Retry = bus.RetryPolicy{MaxRetries: 1, InitialInterval: 10 * time.Millisecond, Multiplier: 1, MaxInterval: 10 * time.Millisecond}
	var c calls
	r, err := bus.NewRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Handle(bus.JobSubmitted, func(ctx context.Context, m *bus.Message) error {
		c.add(m)
		return errors.New("ssh: connection refused")
	})
	e.run(r)
	if err := e.publisher().PublishBody(context.Background(), fakeEvent{bus.JobSubmitted, "job-r", "corr-r"}, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	q := e.topo.QueueName(bus.Planner, bus.JobSubmitted)
	eventually(t, 15*time.Second, "message redriven to the DLQ", func() bool { return e.depth(bus.DLQName(q)).visible == 1 })
	if n := c.n(); n != 4 {
		t.Errorf("handler called %d times, want 4 (2 deliveries × 2 attempts)", n)
	}
	var counts []int
	for i := range c.n() {
		m, _ := c.get(i)
		counts = append(counts, m.ReceiveCount)
	}
	if fmt.Sprint(counts) != "[1 1 2 2]" {
		t.Errorf("receive counts %v, want [1 1 2 2]", counts)
	}
	msgs := e.receiveAll(bus.DLQName(q))
	if len(msgs) != 1 || msgs[0].MessageAttributes[bus.AttrError].StringValue != nil {
		t.Errorf("DLQ messages %+v, want one redriven by SQS (no %s)", msgs, bus.AttrError)
	}
}

// TestMissingQueue: a router whose queues were never created fails at start with an
// error naming every missing queue and the fix; so does a publisher's missing topic.
func TestMissingQueue(t *testing.T) {
	t.Parallel()
	e := newEnv(t) // no stack
	r, err := bus.NewRouter(e.routerConfig(bus.Monitor))
	if err != nil {
		t.Fatal(err)
	}
	r.Handle(bus.TaskReported, func(context.Context, *bus.Message) error { return nil })
	r.HandleTimers(func(context.Context, *bus.Message) error { return nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = r.Run(ctx)
	if !errors.Is(err, bus.ErrNotProvisioned) {
		t.Fatalf("Run = %v, want ErrNotProvisioned", err)
	}
	q := e.topo.QueueName(bus.Monitor, bus.TaskReported)
	for _, want := range []string{q, bus.DLQName(q), e.topo.TimerQueueName(bus.Monitor), "sortie infra up"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}

	p := e.publisher()
	err = p.PublishBody(ctx, fakeEvent{bus.JobSubmitted, "j", "c"}, []byte(`{}`))
	if !errors.Is(err, bus.ErrNotProvisioned) || !strings.Contains(err.Error(), e.topo.TopicName(bus.JobSubmitted)) || !strings.Contains(err.Error(), "sortie infra up") {
		t.Errorf("PublishBody = %v, want ErrNotProvisioned naming the topic and the fix", err)
	}
	err = p.After(ctx, bus.Reaper, time.Second, []byte(`{}`), nil)
	if !errors.Is(err, bus.ErrNotProvisioned) || !strings.Contains(err.Error(), e.topo.TimerQueueName(bus.Reaper)) {
		t.Errorf("After = %v, want ErrNotProvisioned naming the timer queue", err)
	}
}

// TestRegistrationErrors: mistakes in Handle/HandleTimers are all reported by Run,
// before it touches AWS.
func TestRegistrationErrors(t *testing.T) {
	t.Parallel()
	cfg := bus.Config{Topology: bus.Topology{Prefix: "sortie"}, Service: bus.Planner, AWS: awsx.ForEndpoint("http://127.0.0.1:1")}
	r, err := bus.NewRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := func(context.Context, *bus.Message) error { return nil }
	r.Handle(bus.FleetLaunched, h)
	r.Handle(bus.JobSubmitted, h)
	r.Handle(bus.JobSubmitted, h)
	r.HandleTimers(h)
	r.Handle(bus.JobFinished, nil)
	err = r.Run(context.Background())
	if err == nil {
		t.Fatal("Run succeeded")
	}
	for _, want := range []string{
		`does not consume "FleetLaunched"`,
		"sortie-planner-job-submitted has two handlers",
		"planner has no timer queue",
		"handler for JobFinished is nil",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}

	empty, err := bus.NewRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := empty.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "no handlers") {
		t.Errorf("Run without handlers = %v, want a no handlers error", err)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	good := bus.Config{Topology: bus.Topology{Prefix: "sortie"}, Service: bus.Monitor, AWS: awsx.ForEndpoint("http://x")}
	if err := good.Validate(); err != nil {
		t.Errorf("valid config (defaults): %v", err)
	}
	cases := []struct {
		name string
		edit func(*bus.Config)
		want []string
	}{
		{"zero", func(c *bus.Config) { *c = bus.Config{} }, []string{"topology prefix", "no credentials", "no region", "service"}},
		{"concurrency", func(c *bus.Config) { c.Concurrency = 101 }, []string{"concurrency 101"}},
		{"closeTimeout", func(c *bus.Config) { c.CloseTimeout = -time.Second }, []string{"close timeout"}},
		{"waitTooLong", func(c *bus.Config) { c.WaitTime = 25 * time.Second }, []string{"wait time 25s"}},
		{"waitFraction", func(c *bus.Config) { c.WaitTime = 1500 * time.Millisecond }, []string{"wait time 1.5s"}},
		{"retry", func(c *bus.Config) {
			c.Retry = bus.RetryPolicy{MaxRetries: 2, Multiplier: 0.5, MaxInterval: -1}
		}, []string{"initial interval", "multiplier 0.5", "max interval"}},
		{"negativeRetries", func(c *bus.Config) { c.Retry = bus.RetryPolicy{MaxRetries: -1} }, []string{"max retries -1"}},
		{"maxHandleTooShort", func(c *bus.Config) { c.MaxHandle = 500 * time.Millisecond }, []string{"max handle 500ms"}},
		{"maxHandleTooLong", func(c *bus.Config) { c.MaxHandle = 13 * time.Hour }, []string{"max handle 13h0m0s", "12h"}},
		{"maxHandleNegative", func(c *bus.Config) { c.MaxHandle = -time.Minute }, []string{"max handle -1m0s"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.edit(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if _, err := bus.NewRouter(c); err == nil {
				t.Error("NewRouter accepted it")
			}
		})
	}
}

// TestPublishRejectsInvalidEvent: an event that would be dead-lettered by its consumer is
// never published.
func TestPublishRejectsInvalidEvent(t *testing.T) {
	t.Parallel()
	cfg := awsx.ForEndpoint("http://127.0.0.1:1")
	p, err := bus.NewPublisher(bus.PublisherConfig{Topology: bus.Topology{Prefix: "sortie"}, AWS: cfg})
	if err != nil {
		t.Fatal(err)
	}
	bad := jobSubmitted()
	bad.JobID = ""
	err = p.Publish(context.Background(), bad)
	if !errors.Is(err, events.ErrInvalid) {
		t.Errorf("Publish(invalid) = %v, want ErrInvalid", err)
	}
	if err := p.PublishBody(context.Background(), fakeEvent{"NoSuchEvent", "j", "c"}, []byte(`{}`)); err == nil || !strings.Contains(err.Error(), "unknown event type") {
		t.Errorf("PublishBody(unknown type) = %v, want an unknown event type error", err)
	}
}

// TestOnDeadLetterHook: a permanent error tells the hook (job, event type, reason) before
// the message goes to its DLQ; while the hook fails, the message is retried instead of
// dead-lettered, so a job's rejection is never lost.
func TestOnDeadLetterHook(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{visibilityTimeout: 1})
	cfg := e.routerConfig(bus.Planner)
	cfg.Retry = bus.RetryPolicy{MaxRetries: 1, InitialInterval: 10 * time.Millisecond, Multiplier: 1, MaxInterval: 10 * time.Millisecond}
	var mu sync.Mutex
	var told []bus.DeadLetter
	hookFails := 2
	cfg.OnDeadLetter = func(_ context.Context, d bus.DeadLetter) error {
		mu.Lock()
		defer mu.Unlock()
		told = append(told, d)
		if hookFails > 0 {
			hookFails--
			return errors.New("sns down")
		}
		return nil
	}
	r, err := bus.NewRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Handle(bus.JobSubmitted, func(ctx context.Context, m *bus.Message) error {
		return bus.Permanent(errors.New("template gpu-xl is not defined"))
	})
	stop := e.run(r)
	if err := e.publisher().PublishBody(context.Background(), fakeEvent{bus.JobSubmitted, "job-h", "corr-h"}, []byte(`{"job_id":"job-h","plan_revision":2}`)); err != nil {
		t.Fatal(err)
	}
	q := e.topo.QueueName(bus.Planner, bus.JobSubmitted)
	eventually(t, 20*time.Second, "message in the DLQ", func() bool { return e.depth(bus.DLQName(q)).visible == 1 })
	mu.Lock()
	defer mu.Unlock()
	if len(told) != 3 {
		t.Fatalf("hook told %d times, want 3 (two failures, then the one that lets the message go)", len(told))
	}
	d := told[2]
	if d.JobID != "job-h" || d.CorrelationID != "corr-h" || d.EventType != bus.JobSubmitted || d.Queue != q || d.DLQ != bus.DLQName(q) ||
		!strings.Contains(d.Reason, "gpu-xl") || d.Exhausted || d.PlanRevision != 2 {
		t.Errorf("dead letter %+v", d)
	}
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
}
