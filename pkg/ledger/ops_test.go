package ledger_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
)

// finish marks stages of a job done, as the stages would.
func finish(t *testing.T, l *ledger.Ledger, jobID string, fields ledger.Fields, stages ...ledger.Stage) {
	t.Helper()
	for _, s := range stages {
		c, err := l.Claim(context.Background(), jobID, s)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Done(context.Background(), fields); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHold: a hold is refused for an unknown or ended job; once placed it is read back,
// keeps a finished job "held" until released, and an on-failure hold does not hold a
// success.
func TestHold(t *testing.T) {
	ctx := context.Background()
	l, _, _ := newLedger(t, ledger.Config{})
	until := time.Now().Add(time.Hour)
	if err := l.PlaceHold(ctx, "job-none", ledger.Hold{Until: until}, false); !errors.Is(err, ledger.ErrUnknownJob) {
		t.Fatalf("hold of an unknown job: %v, want ErrUnknownJob", err)
	}
	if err := l.PlaceHold(ctx, "job-h", ledger.Hold{Until: time.Now().Add(-time.Minute)}, true); err == nil {
		t.Fatal("a hold ending in the past was placed")
	}
	// Placed before the job is submitted (submit --hold-on-failure).
	if err := l.PlaceHold(ctx, "job-h", ledger.Hold{Until: until, By: "ops", Reason: "debug", OnFailure: true}, true); err != nil {
		t.Fatal(err)
	}
	if sub, err := l.Submit(ctx, "job-h", "digest-1"); err != nil || sub.Reused {
		t.Fatalf("submit after a hold: %+v %v", sub, err)
	}
	finish(t, l, "job-h", ledger.Fields{"outcome": events.OutcomeFailed, "reason": "exit 3"}, ledger.Planned, ledger.Launched, ledger.Finished)
	rec, err := l.Get(ctx, "job-h")
	if err != nil {
		t.Fatal(err)
	}
	h := rec.Hold()
	if h.By != "ops" || h.Reason != "debug" || !h.OnFailure || h.Until.UnixMilli() != until.UnixMilli() {
		t.Errorf("hold read back %+v", h)
	}
	if !h.Active(time.Now(), events.OutcomeFailed) || h.Active(time.Now(), events.OutcomeSucceeded) || h.Active(until, events.OutcomeFailed) {
		t.Errorf("on-failure hold: active on failure, not on success, not at its end; got otherwise")
	}
	s := rec.Summarize()
	if s.State != ledger.StateHeld || s.Hold == nil || s.Hold.By != "ops" || !s.Hold.Until.Equal(until.UTC().Truncate(time.Millisecond)) {
		t.Errorf("summary %+v hold %+v, want held by ops until %s", s, s.Hold, until)
	}
	if _, err := l.ReleaseHold(ctx, "job-h"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.ReleaseHold(ctx, "job-h"); err == nil || !strings.Contains(err.Error(), "no hold in force") {
		t.Errorf("second release: %v, want no hold in force", err)
	}
	rec, _ = l.Get(ctx, "job-h")
	if s := rec.Summarize(); s.State != string(ledger.Finished) || s.Hold != nil {
		t.Errorf("released: state %s hold %+v, want finished without a hold", s.State, s.Hold)
	}
	finish(t, l, "job-h", nil, ledger.Terminated)
	if err := l.PlaceHold(ctx, "job-h", ledger.Hold{Until: until}, false); !errors.Is(err, ledger.ErrEnded) {
		t.Errorf("hold of a terminated job: %v, want ErrEnded", err)
	}
}

// TestCancel: a cancel is recorded once; a second says it was cancelled; a finished job
// or an unknown one is not cancelled.
func TestCancel(t *testing.T) {
	ctx := context.Background()
	l, _, _ := newLedger(t, ledger.Config{})
	if err := l.CancelJob(ctx, "job-x", ledger.Cancel{By: "ops"}); !errors.Is(err, ledger.ErrUnknownJob) {
		t.Fatalf("cancel of an unknown job: %v", err)
	}
	if _, err := l.Submit(ctx, "job-c", "d"); err != nil {
		t.Fatal(err)
	}
	if err := l.CancelJob(ctx, "job-c", ledger.Cancel{By: "ops", Reason: "wrong input"}); err != nil {
		t.Fatal(err)
	}
	rec, _ := l.Get(ctx, "job-c")
	c, ok := rec.Cancelled()
	if !ok || c.Text() != "cancelled by ops: wrong input" || time.Since(c.At) > time.Minute {
		t.Errorf("cancel read back %+v %v", c, ok)
	}
	if err := l.CancelJob(ctx, "job-c", ledger.Cancel{By: "other"}); !errors.Is(err, ledger.ErrCancelled) {
		t.Errorf("second cancel: %v, want ErrCancelled", err)
	}
	rec2, _ := l.Get(ctx, "job-c")
	if c2, _ := rec2.Cancelled(); c2.By != "ops" {
		t.Errorf("second cancel changed the record: %+v", c2)
	}
	if _, err := l.Submit(ctx, "job-f", "d"); err != nil {
		t.Fatal(err)
	}
	finish(t, l, "job-f", ledger.Fields{"outcome": events.OutcomeSucceeded}, ledger.Finished)
	if err := l.CancelJob(ctx, "job-f", ledger.Cancel{By: "ops"}); !errors.Is(err, ledger.ErrEnded) || !strings.Contains(err.Error(), "succeeded") {
		t.Errorf("cancel of a finished job: %v, want ErrEnded naming its outcome", err)
	}
	rec3, _ := l.Get(ctx, "job-f")
	if _, ok := rec3.Cancelled(); ok {
		t.Error("a finished job was marked cancelled")
	}
}
