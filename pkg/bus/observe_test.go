package bus_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/bus"
)

// recorder is a bus.Observer that remembers what it saw.
type recorder struct {
	mu       sync.Mutex
	checks   []map[string]error
	status   map[string]error
	ages     []string // the queue of each age reported
	started  map[string]int
	outcomes map[string]int // "JobSubmitted/handled" → count
	took     []time.Duration
}

func newRecorder() *recorder {
	return &recorder{status: map[string]error{}, started: map[string]int{}, outcomes: map[string]int{}}
}

func (r *recorder) QueuesChecked(s map[string]error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checks = append(r.checks, s)
}

func (r *recorder) QueueStatus(q string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status[q] = err
}

func (r *recorder) MessageReceived(queue string, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ages = append(r.ages, queue)
}

func (r *recorder) HandlerStarted(et string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.started[et]++
}

func (r *recorder) HandlerDone(et string, took time.Duration, o bus.Outcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outcomes[et+"/"+string(o)]++
	r.took = append(r.took, took)
}

func (r *recorder) lastCheck() map[string]error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.checks) == 0 {
		return nil
	}
	return r.checks[len(r.checks)-1]
}

func (r *recorder) outcome(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.outcomes[key]
}

// TestAwaitQueuesAndObserver: a router told to await its queues waits for them while
// reporting what is missing, starts consuming once `infra up` created them, and reports
// every delivery's outcome (handled, failed, dead-lettered) and the messages' ages.
func TestAwaitQueuesAndObserver(t *testing.T) {
	t.Parallel()
	e := newEnv(t) // no queues yet
	rec := newRecorder()
	cfg := e.routerConfig(bus.Planner)
	cfg.Observer = rec
	cfg.AwaitQueues = true
	r, err := bus.NewRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var readyCalls atomic.Int32
	r.OnReady(func(context.Context) error { readyCalls.Add(1); return nil })
	slow := make(chan struct{})
	r.Handle(bus.JobSubmitted, func(_ context.Context, m *bus.Message) error {
		switch m.JobID {
		case "bad":
			return bus.Permanent(errors.New("no such template"))
		case "flaky":
			return errors.New("throttled")
		case "slow":
			<-slow
		}
		return nil
	})
	stop := e.run(r)

	q := e.topo.QueueName(bus.Planner, bus.JobSubmitted)
	eventually(t, 10*time.Second, "a check reporting the missing queues", func() bool {
		c := rec.lastCheck()
		return c != nil && errors.Is(c[q], bus.ErrNotProvisioned) && errors.Is(c[bus.DLQName(q)], bus.ErrNotProvisioned)
	})

	if n := readyCalls.Load(); n != 0 {
		t.Errorf("OnReady ran %d times before the queues existed", n)
	}
	e.createStack(stackOpts{})
	eventually(t, 20*time.Second, "a check finding every queue", func() bool {
		c := rec.lastCheck()
		return c != nil && c[q] == nil && c[bus.DLQName(q)] == nil && len(c) == 2
	})
	eventually(t, 10*time.Second, "OnReady once the queues exist", func() bool { return readyCalls.Load() == 1 })

	p := e.publisher()
	for _, id := range []string{"ok", "bad", "flaky", "slow"} {
		if err := p.PublishBody(context.Background(), fakeEvent{bus.JobSubmitted, id, "corr-" + id}, []byte(fmt.Sprintf(`{"job_id":%q}`, id))); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 20*time.Second, "handled, dead-lettered and failed outcomes", func() bool {
		return rec.outcome("JobSubmitted/handled") == 1 && rec.outcome("JobSubmitted/dead_lettered") == 1 && rec.outcome("JobSubmitted/failed") >= 1
	})
	rec.mu.Lock()
	inFlight := rec.started[bus.JobSubmitted] - len(rec.took)
	ages := len(rec.ages)
	rec.mu.Unlock()
	if inFlight != 1 {
		t.Errorf("%d handlers in flight (started minus done), want 1: the slow one", inFlight)
	}
	if ages < 4 {
		t.Errorf("%d message ages reported, want one per receipt (>= 4)", ages)
	}
	close(slow)
	eventually(t, 10*time.Second, "the slow message handled", func() bool { return rec.outcome("JobSubmitted/handled") == 2 })
	if err := stop(); err != nil {
		t.Errorf("Run = %v", err)
	}
}

// TestAwaitQueuesCancelled: a router still waiting for its queues stops cleanly.
func TestAwaitQueuesCancelled(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rec := newRecorder()
	cfg := e.routerConfig(bus.Planner)
	cfg.Observer = rec
	cfg.AwaitQueues = true
	r, err := bus.NewRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Handle(bus.JobSubmitted, func(context.Context, *bus.Message) error { return nil })
	stop := e.run(r)
	eventually(t, 10*time.Second, "a check", func() bool { return rec.lastCheck() != nil })
	if err := stop(); err != nil {
		t.Errorf("Run = %v, want nil when cancelled while waiting", err)
	}
	if !strings.Contains(e.logs.String(), "waiting for queues") {
		t.Errorf("no log line says what the router waits for:\n%s", e.logs)
	}
}

// TestOnReadyError: an OnReady hook that fails makes Run fail, before any receive.
func TestOnReadyError(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{})
	r, err := bus.NewRouter(e.routerConfig(bus.Reaper))
	if err != nil {
		t.Fatal(err)
	}
	r.HandleTimers(func(context.Context, *bus.Message) error { return nil })
	r.OnReady(func(context.Context) error { return errors.New("arming the sweep: boom") })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Run(ctx); err == nil || !strings.Contains(err.Error(), "arming the sweep: boom") {
		t.Errorf("Run = %v, want the hook's error", err)
	}
}

// TestTimerAgesLeftOut: the ages of timer messages, delayed on purpose, are not reported;
// their deliveries are, under the timer event type.
func TestTimerAgesLeftOut(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createStack(stackOpts{})
	rec := newRecorder()
	cfg := e.routerConfig(bus.Reaper)
	cfg.Observer = rec
	r, err := bus.NewRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Handle(bus.JobFinished, func(context.Context, *bus.Message) error { return nil })
	r.HandleTimers(func(context.Context, *bus.Message) error { return nil })
	stop := e.run(r)
	p := e.publisher()
	if err := p.After(context.Background(), bus.Reaper, time.Second, []byte(`{}`), nil); err != nil {
		t.Fatal(err)
	}
	if err := p.PublishBody(context.Background(), fakeEvent{bus.JobFinished, "j", "c"}, []byte(`{"job_id":"j"}`)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the timer and the event handled", func() bool {
		return rec.outcome(bus.TimerEventType+"/handled") == 1 && rec.outcome(bus.JobFinished+"/handled") == 1
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	want := e.topo.QueueName(bus.Reaper, bus.JobFinished)
	if len(rec.ages) != 1 || rec.ages[0] != want {
		t.Errorf("ages reported for %v, want only %s", rec.ages, want)
	}
}
