package ledger_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
)

func TestStageAtAndReservationID(t *testing.T) {
	for _, tt := range []struct {
		rev        int
		stage, res string
	}{{0, "launched", "job-1"}, {1, "launched", "job-1"}, {2, "launched@2", "job-1#r2"}, {12, "launched@12", "job-1#r12"}} {
		if got := ledger.StageAt(ledger.Launched, tt.rev); string(got) != tt.stage {
			t.Errorf("StageAt(launched, %d) = %q, want %q", tt.rev, got, tt.stage)
		}
		if got := ledger.ReservationID("job-1", tt.rev); got != tt.res {
			t.Errorf("ReservationID(job-1, %d) = %q, want %q", tt.rev, got, tt.res)
		}
	}
}

// TestLostInstancesAndRevisions walks a job through a loss and its replacement, reading the
// record as the monitor and the planner do.
func TestLostInstancesAndRevisions(t *testing.T) {
	l, _, _ := newLedger(t, ledger.Config{})
	ctx := context.Background()
	job := cloudtest.Unique("job-lost")
	get := func() ledger.Record {
		t.Helper()
		rec, err := l.Get(ctx, job)
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	if rec := get(); rec.PlanRevision() != 1 {
		t.Fatalf("a new job's revision is %d, want 1", rec.PlanRevision())
	}
	if pending, _ := get().ReplacementPending(); pending {
		t.Fatal("a job that lost nothing has a replacement pending")
	}

	// Lost twice (the warning, then the termination): the first cause stays.
	must(l.MarkLost(ctx, job, "i-0a", events.LostSpotInterruption))
	must(l.MarkLost(ctx, job, "i-0a", events.LostTerminated))
	rec := get()
	if rec.Lost()["i-0a"] != events.LostSpotInterruption || rec.LostSent("i-0a") || !slices.Equal(rec.Uncovered(), []string{"i-0a"}) {
		t.Fatalf("lost %v, sent %v, uncovered %v", rec.Lost(), rec.LostSent("i-0a"), rec.Uncovered())
	}
	if pending, why := rec.ReplacementPending(); !pending || !strings.Contains(why, "i-0a") {
		t.Errorf("pending %v %q: want the unanswered loss", pending, why)
	}
	must(l.MarkLostSent(ctx, job, "i-0a"))

	// Covered by revision 2, planned: still pending until it is bootstrapped.
	must(l.CoverLost(ctx, job, []string{"i-0a"}, "2"))
	must(l.CoverLost(ctx, job, []string{"i-0a"}, "none: too late")) // the first answer stays
	must(l.Note(ctx, job, ledger.Fields{ledger.AttrPlanRevision: 2}))
	must(l.SetRevisionState(ctx, job, 2, ledger.RevPlanned))
	rec = get()
	if rec.LostBy("i-0a") != "2" || rec.PlanRevision() != 2 || !rec.LostSent("i-0a") {
		t.Fatalf("lost by %q, revision %d", rec.LostBy("i-0a"), rec.PlanRevision())
	}
	if pending, why := rec.ReplacementPending(); !pending || !strings.Contains(why, "revision 2 is planned") {
		t.Errorf("pending %v %q: want revision 2 on its way", pending, why)
	}
	must(l.RecordBootstrapped(ctx, job, 2, []ledger.RevisionInstance{{ID: "i-0b", Endpoint: "127.0.0.1:22", HostKey: "ssh-ed25519 AAAA", OK: true}}))
	rec = get()
	if pending, why := rec.ReplacementPending(); pending {
		t.Errorf("pending after the replacement bootstrapped: %s", why)
	}
	insts, err := rec.RevisionInstances()
	if err != nil || len(insts) != 1 || insts[0].ID != "i-0b" || insts[0].HostKey != "ssh-ed25519 AAAA" {
		t.Errorf("revision instances %+v, %v", insts, err)
	}
	sum := rec.Summarize()
	if sum.PlanRevision != 2 || !slices.Equal(sum.Lost, []string{"i-0a: spot-interruption, replaced by revision 2"}) {
		t.Errorf("summary revision %d, lost %q", sum.PlanRevision, sum.Lost)
	}

	// Revision 3 failing to launch is not pending either.
	must(l.MarkLost(ctx, job, "i-0b", events.LostTerminated))
	must(l.CoverLost(ctx, job, []string{"i-0b"}, "3"))
	must(l.Note(ctx, job, ledger.Fields{ledger.AttrPlanRevision: 3}))
	must(l.SetRevisionState(ctx, job, 3, ledger.RevFailed+": no capacity within its deadline"))
	if pending, why := get().ReplacementPending(); pending {
		t.Errorf("a failed revision is pending: %s", why)
	}
}

// TestManyFieldsInOneUpdate: an update of more than ten fields keeps every one (kumo
// substitutes expression placeholders as text: "#f1" used to rewrite "#f10").
func TestManyFieldsInOneUpdate(t *testing.T) {
	l, _, _ := newLedger(t, ledger.Config{})
	ctx := context.Background()
	job := cloudtest.Unique("job-fields")
	fields := ledger.Fields{}
	for i := range 25 {
		fields[fmt.Sprintf("field_%02d", i)] = fmt.Sprintf("value %d", i)
	}
	if err := l.Note(ctx, job, fields); err != nil {
		t.Fatal(err)
	}
	rec, err := l.Get(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range fields {
		if rec.Attrs[k] != v {
			t.Errorf("%s = %q, want %q", k, rec.Attrs[k], v)
		}
	}
}
