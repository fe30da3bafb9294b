package bus_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/sortie-fleet/sortie/pkg/bus"
)

// Log messages of the heartbeat.
const (
	logExtended   = "message still being handled: visibility extended"
	logCapReached = "message handled for longer than the maximum: no longer hiding it, SQS will deliver it again"
)

// TestHeartbeatKeepsMessageHidden: on a queue with a 2 s visibility timeout, a handler
// that takes 5 s keeps its message: neither another consumer polling the queue all along
// nor the router's second worker receives it meanwhile, the handler is called once, and
// the message is deleted at the end. Run is cancelled 3 s in (past the visibility
// timeout): the heartbeat goes on while the router drains, and stops with the ack.
func TestHeartbeatKeepsMessageHidden(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{visibilityTimeout: 2})
	cfg := e.routerConfig(bus.Planner) // Concurrency 2: one worker stays polling
	cfg.CloseTimeout = 10 * time.Second
	r, err := bus.NewRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var c calls
	started, finished := make(chan struct{}), make(chan struct{})
	r.Handle(bus.JobSubmitted, func(ctx context.Context, m *bus.Message) error {
		if c.add(m) > 1 {
			return nil
		}
		close(started)
		defer close(finished)
		select {
		case <-time.After(5 * time.Second):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	stop := e.run(r)
	if err := e.publisher().PublishBody(context.Background(), fakeEvent{bus.JobSubmitted, "job-hb", "corr-hb"}, []byte(`{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatalf("handler not called; logs:\n%s", e.logs)
	}
	q := e.topo.QueueName(bus.Planner, bus.JobSubmitted)
	w := e.watchQueue(q)

	time.Sleep(3 * time.Second) // past the visibility timeout
	if n := bus.Heartbeats(r); n != 1 {
		t.Errorf("%d heartbeats running while the handler runs, want 1", n)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }() // drains: waits for the handler
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		t.Fatal("handler did not finish")
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Run = %v after draining, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the drain")
	}
	if n := bus.Heartbeats(r); n != 0 {
		t.Errorf("%d heartbeats running after Run returned, want 0", n)
	}
	if d := e.depth(q); d.total() != 0 {
		t.Errorf("queue holds %+v after the drain, want nothing (the handled message deleted)", d)
	}
	w.stop()
	if got := w.received(); len(got) != 0 {
		t.Errorf("another consumer received the message while it was handled: %s", aws.ToString(got[0].msg.Body))
	}
	if n := c.n(); n != 1 {
		t.Errorf("handler called %d times, want once", n)
	}
	// Every 2/3 s over 5 s.
	lines := e.logs.lines(logExtended)
	if len(lines) < 4 {
		t.Errorf("visibility extended %d times in 5 s, want at least 4; logs:\n%s", len(lines), e.logs)
	} else if l := lines[0]; l["job_id"] != "job-hb" || l["correlation_id"] != "corr-hb" || l["visibility_timeout"] != 2.0 {
		t.Errorf("heartbeat log %v, want the ids and a 2 s visibility timeout", l)
	}
}

// TestHeartbeatStopsAtMaxHandle: with a 2 s visibility timeout and MaxHandle 3 s, a
// handler that would take 7 s keeps its message hidden past the 2 s, but no longer than
// about 3 s: then another consumer receives it, and the router logs a warning with the
// job and correlation ids.
func TestHeartbeatStopsAtMaxHandle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{visibilityTimeout: 2})
	cfg := e.routerConfig(bus.Planner)
	cfg.Concurrency = 1 // the router itself receives nothing while the handler runs
	cfg.MaxHandle = 3 * time.Second
	r, err := bus.NewRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var c calls
	started, release := make(chan struct{}), make(chan struct{})
	r.Handle(bus.JobSubmitted, func(ctx context.Context, m *bus.Message) error {
		if c.add(m) == 1 {
			close(started)
		}
		select {
		case <-time.After(7 * time.Second):
		case <-release: // the test has seen what it needs: no need to wait it out
		}
		return nil
	})
	stop := e.run(r)
	if err := e.publisher().PublishBody(context.Background(), fakeEvent{bus.JobSubmitted, "job-cap", "corr-cap"}, []byte(`{"n":2}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatalf("handler not called; logs:\n%s", e.logs)
	}
	w := e.watchQueue(e.topo.QueueName(bus.Planner, bus.JobSubmitted))
	eventually(t, 7*time.Second, "message delivered again while the stuck handler runs", func() bool { return len(w.received()) > 0 })
	w.stop()
	got := w.received()[0]
	firstMS, err := strconv.ParseInt(got.msg.Attributes["ApproximateFirstReceiveTimestamp"], 10, 64)
	if err != nil {
		t.Fatalf("ApproximateFirstReceiveTimestamp: %v", err)
	}
	if after := got.at.Sub(time.UnixMilli(firstMS)); after < 3*time.Second || after > 5*time.Second {
		t.Errorf("delivered again %s after the first receipt, want about the 3 s MaxHandle (not the 2 s visibility timeout)", after)
	}
	if aws.ToString(got.msg.Body) != `{"n":2}` || got.msg.Attributes["ApproximateReceiveCount"] != "2" {
		t.Errorf("received %s with receive count %s, want the handled message's second delivery", aws.ToString(got.msg.Body), got.msg.Attributes["ApproximateReceiveCount"])
	}
	eventually(t, 2*time.Second, "warning logged", func() bool { return len(e.logs.lines(logCapReached)) > 0 })
	lines := e.logs.lines(logCapReached)
	if l := lines[0]; len(lines) != 1 || l["level"] != "WARN" || l["job_id"] != "job-cap" || l["correlation_id"] != "corr-cap" || l["max_handle"] != "3s" {
		t.Errorf("warnings %v, want one with the job and correlation ids and max_handle 3s", lines)
	}
	if n := bus.Heartbeats(r); n != 0 {
		t.Errorf("%d heartbeats running after the cap, want 0", n)
	}
	close(release)
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if n := c.n(); n != 1 {
		t.Errorf("handler called %d times, want once", n)
	}
}

// TestShutdownStopsHeartbeats: when a shutdown outlasts CloseTimeout and cancels a
// handler that is still running, Run returns with no heartbeat left, and the message
// becomes visible again after its (1 s) visibility timeout instead of being extended
// forever.
func TestShutdownStopsHeartbeats(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{visibilityTimeout: 1})
	cfg := e.routerConfig(bus.Planner)
	cfg.CloseTimeout = 300 * time.Millisecond
	r, err := bus.NewRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var c calls
	started := make(chan struct{})
	r.Handle(bus.JobSubmitted, func(ctx context.Context, m *bus.Message) error {
		if c.add(m) == 1 {
			close(started)
		}
		<-ctx.Done() // stuck until the hard stop
		return ctx.Err()
	})
	stop := e.run(r)
	if err := e.publisher().PublishBody(context.Background(), fakeEvent{bus.JobSubmitted, "job-sd", "corr-sd"}, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatalf("handler not called; logs:\n%s", e.logs)
	}
	eventually(t, 3*time.Second, "visibility extended once", func() bool { return len(e.logs.lines(logExtended)) > 0 })
	if n := bus.Heartbeats(r); n != 1 {
		t.Errorf("%d heartbeats running while the handler runs, want 1", n)
	}

	if err := stop(); err == nil {
		t.Error("Run = nil, want the shutdown timeout error")
	}
	stoppedAt := time.Now()
	if n := bus.Heartbeats(r); n != 0 {
		t.Errorf("%d heartbeats still running after Run returned, want 0", n)
	}
	extended := len(e.logs.lines(logExtended))

	w := e.watchQueue(e.topo.QueueName(bus.Planner, bus.JobSubmitted))
	eventually(t, 3*time.Second, "message visible again after the shutdown", func() bool { return len(w.received()) > 0 })
	if after := w.received()[0].at.Sub(stoppedAt); after > 2*time.Second {
		t.Errorf("message visible again %s after Run returned, want within its 1 s visibility timeout", after)
	}
	if n := len(e.logs.lines(logExtended)); n != extended {
		t.Errorf("visibility extended %d more times after Run returned", n-extended)
	}
	if n := c.n(); n != 1 {
		t.Errorf("handler called %d times, want once", n)
	}
}
