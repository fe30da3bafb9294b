package planner

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
)

type plans struct {
	mu  sync.Mutex
	got []events.FleetPlanned
}

func (p *plans) Publish(_ context.Context, e events.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	fp, ok := e.(events.FleetPlanned)
	if !ok {
		return nil
	}
	if err := fp.Validate(); err != nil {
		return err
	}
	p.got = append(p.got, fp)
	return nil
}

// TestReplanLostInstances plans the seed's job (202 files, 10 a minute per m3.medium, 60 s
// boot, 10 minutes: 3 instances), then loses its instances one by one: the planner sizes
// what is left in the time left, less the instances still running, against the real ledger.
func TestReplanLostInstances(t *testing.T) {
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	l := s.Ledger()
	ctx := context.Background()
	job := seedJob()
	job.JobID = cloudtest.Unique("job-replan")
	job.Time = time.Now().UTC().Truncate(time.Second)
	now := job.Time
	pub := &plans{}
	h := handler{
		planner: &planner{ops: opsconfig.Default(), now: func() time.Time { return now }},
		pub:     pub, ledger: l, replans: l, reuse: ledger.Rejecter{},
	}
	if err := h.handle(ctx, &bus.Message{Payload: cloudtest.Encode(t, job), ReceiveCount: 1}); err != nil {
		t.Fatal(err)
	}
	if len(pub.got) != 1 || pub.got[0].Count != 3 || pub.got[0].PlanRevision != 1 {
		t.Fatalf("first plan %+v, want 3 instances, revision 1", pub.got)
	}
	// What the provisioner and the monitor record on the way.
	if err := l.Note(ctx, job.JobID, ledger.Fields{"instances": "i-00000000000000001,i-00000000000000002,i-00000000000000003", "tasks_succeeded": 40}); err != nil {
		t.Fatal(err)
	}
	lose := func(id string, at time.Duration) events.InstanceLost {
		t.Helper()
		now = job.Time.Add(at)
		if err := l.MarkLost(ctx, job.JobID, id, events.LostSpotInterruption); err != nil {
			t.Fatal(err)
		}
		e := events.InstanceLost{Header: events.NewHeader(job.JobID, job.CorrelationID, now), FleetID: job.JobID, PlanRevision: 1,
			InstanceID: id, Cause: events.LostSpotInterruption, KeyName: "sortie-dev"}
		if err := h.handleLost(ctx, &bus.Message{Payload: cloudtest.Encode(t, e), ReceiveCount: 1}); err != nil {
			t.Fatal(err)
		}
		return e
	}
	record := func() ledger.Record {
		t.Helper()
		rec, err := l.Get(ctx, job.JobID)
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}

	// 2 minutes in, 40 done: 162 items in 8 minutes less the boot (70 per instance) need 3;
	// 2 still run, so 1 replacement, revision 2.
	first := lose("i-00000000000000002", 2*time.Minute)
	if len(pub.got) != 2 {
		t.Fatalf("%d plans, want the replacement", len(pub.got))
	}
	r2 := pub.got[1]
	if r2.PlanRevision != 2 || r2.Count != 1 || r2.Items != 162 || r2.InstanceType != "m3.medium" || r2.FleetID != job.JobID ||
		r2.Nonce == "" || r2.Nonce == pub.got[0].Nonce || !strings.Contains(r2.Rationale, "replan 2 after i-00000000000000002 was lost") ||
		!strings.Contains(r2.Rationale, "3 × m3.medium needed, 2 still running, so 1 more") {
		t.Errorf("replacement plan %+v", r2)
	}
	if r2.Params["queue"] != job.Params["queue"] || !r2.SubmittedAt.Equal(job.Time) || r2.DeadlineSeconds != 600 {
		t.Errorf("replacement plan does not carry the job: %+v", r2)
	}
	rec := record()
	if rec.PlanRevision() != 2 || rec.LostBy("i-00000000000000002") != "2" || rec.RevisionState(2) != ledger.RevPlanned {
		t.Errorf("ledger: revision %d, lost by %q, revision 2 %q", rec.PlanRevision(), rec.LostBy("i-00000000000000002"), rec.RevisionState(2))
	}
	if pending, why := rec.ReplacementPending(); !pending || !strings.Contains(why, "revision 2") {
		t.Errorf("pending %v %q, want revision 2 on its way", pending, why)
	}

	// The same InstanceLost again: answered for, nothing planned.
	if err := h.handleLost(ctx, &bus.Message{Payload: cloudtest.Encode(t, first), ReceiveCount: 2}); err != nil {
		t.Fatal(err)
	}
	if len(pub.got) != 2 {
		t.Fatalf("a redelivered InstanceLost planned again: %+v", pub.got[2:])
	}

	// 5 minutes in, 140 done: 62 items in 4 minutes (40 per instance) need 2; the first
	// plan's third instance and the replacement on its way make 2: none needed.
	if err := l.Note(ctx, job.JobID, ledger.Fields{"tasks_succeeded": 140}); err != nil {
		t.Fatal(err)
	}
	lose("i-00000000000000001", 5*time.Minute)
	if len(pub.got) != 2 {
		t.Fatalf("planned %+v, want no replacement", pub.got[2:])
	}
	if by := record().LostBy("i-00000000000000001"); !strings.Contains(by, "none: the 2 instances still running can finish the 62 items left") {
		t.Errorf("lost by %q", by)
	}

	// 9 minutes 50 in, 100 items left: no fleet can make it; the job goes on with what runs.
	if err := l.Note(ctx, job.JobID, ledger.Fields{"tasks_succeeded": 102}); err != nil {
		t.Fatal(err)
	}
	lose("i-00000000000000003", 9*time.Minute+50*time.Second)
	if by := record().LostBy("i-00000000000000003"); len(pub.got) != 2 || !strings.Contains(by, "none: no fleet can finish what is left by the deadline") {
		t.Errorf("lost by %q, plans %d", by, len(pub.got))
	}
}
