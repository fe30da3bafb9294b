package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/bus"
)

// TestTimerDelay: a timer reaches the service's timer handler no earlier than its delay,
// with its body, attributes and the ids of the context that set it.
func TestTimerDelay(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{})
	var c calls
	r, err := bus.NewRouter(e.routerConfig(bus.Monitor))
	if err != nil {
		t.Fatal(err)
	}
	r.HandleTimers(func(ctx context.Context, m *bus.Message) error { c.add(m); return nil })
	e.run(r)

	ctx := bus.WithIDs(context.Background(), "job-9", "corr-9")
	sent := time.Now()
	if err := e.publisher().After(ctx, bus.Monitor, 2*time.Second, []byte(`{"check":"fleet-1"}`), map[string]string{"kind": "liveness"}); err != nil {
		t.Fatalf("After: %v", err)
	}
	eventually(t, 10*time.Second, "timer delivered", func() bool { return c.n() == 1 })
	m, at := c.get(0)
	if d := at.Sub(sent); d < 2*time.Second {
		t.Errorf("timer delivered after %s, want at least 2s", d)
	}
	if string(m.Payload) != `{"check":"fleet-1"}` || m.Attributes["kind"] != "liveness" {
		t.Errorf("timer body %s attributes %v", m.Payload, m.Attributes)
	}
	if m.JobID != "job-9" || m.CorrelationID != "corr-9" {
		t.Errorf("timer ids %q/%q, want job-9/corr-9", m.JobID, m.CorrelationID)
	}
	if _, ok := m.Attributes[bus.AttrDue]; ok {
		t.Errorf("a timer within one hop carries %s", bus.AttrDue)
	}
}

// TestTimerChaining: with the maximum SQS delay shortened to 1 s, a 3 s timer takes
// several hops, is re-deferred by the router each time it arrives early, and reaches the
// handler once, no earlier than it is due. This is the path a 1000 s timer takes with
// the real 900 s limit.
func TestTimerChaining(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{})
	var c calls
	r, err := bus.NewRouter(e.routerConfig(bus.Reaper))
	if err != nil {
		t.Fatal(err)
	}
	p := e.publisher()
	bus.SetMaxTimerDelay(p, r, time.Second)
	r.HandleTimers(func(ctx context.Context, m *bus.Message) error { c.add(m); return nil })
	e.run(r)

	sent := time.Now()
	// 3 s against 1 s hops: the first hop arrives ~2 s early, so the router must re-defer
	// it even on a loaded machine whose receives lag by a second.
	if err := p.After(context.Background(), bus.Reaper, 3*time.Second, []byte(`{"sweep":true}`), nil); err != nil {
		t.Fatalf("After: %v", err)
	}
	eventually(t, 15*time.Second, "chained timer delivered", func() bool { return c.n() == 1 })
	m, at := c.get(0)
	if d := at.Sub(sent); d < 3*time.Second {
		t.Errorf("chained timer delivered after %s, want at least 3s", d)
	}
	if m.Attributes[bus.AttrDue] == "" || string(m.Payload) != `{"sweep":true}` {
		t.Errorf("delivered %s with attributes %v, want the body and a %s attribute", m.Payload, m.Attributes, bus.AttrDue)
	}
	deferred := len(e.logs.lines("timer not due yet: deferred"))
	if deferred < 1 {
		t.Errorf("router re-deferred the timer %d times, want at least once", deferred)
	}
	time.Sleep(1200 * time.Millisecond)
	if n := c.n(); n != 1 {
		t.Errorf("timer handled %d times, want once", n)
	}
	q := e.topo.TimerQueueName(bus.Reaper)
	if d := e.depth(q); d.total() != 0 {
		t.Errorf("timer queue holds %+v after delivery, want nothing", d)
	}
}

// TestLongTimerIsChained: with the real limit, a 1000 s timer is queued as one delayed
// message (900 s, the SQS maximum) rather than refused by SQS.
func TestLongTimerIsChained(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{})
	if err := e.publisher().After(context.Background(), bus.Monitor, 1000*time.Second, []byte(`{}`), nil); err != nil {
		t.Fatalf("After(1000s): %v", err)
	}
	if d := e.depth(e.topo.TimerQueueName(bus.Monitor)); d.delayed != 1 || d.visible != 0 {
		t.Errorf("timer queue holds %+v, want one delayed message", d)
	}
	if err := e.publisher().After(context.Background(), bus.Planner, time.Second, []byte(`{}`), nil); err == nil {
		t.Error("After for a service without a timer queue succeeded")
	}
}
