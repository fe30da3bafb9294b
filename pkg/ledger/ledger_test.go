package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
)

// newLedger returns a ledger on a fresh stack's table in kumo (through the local cloud),
// with the DynamoDB client for direct reads.
func newLedger(t *testing.T, cfg ledger.Config) (*ledger.Ledger, *dynamodb.Client, string) {
	t.Helper()
	st := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	api := dynamodb.NewFromConfig(st.AWS)
	cfg.API, cfg.Table = api, st.Topology.LedgerTableName()
	l, err := ledger.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l, api, cfg.Table
}

func TestTableFromInfraUp(t *testing.T) {
	_, api, table := newLedger(t, ledger.Config{})
	d, err := api.DescribeTable(t.Context(), &dynamodb.DescribeTableInput{TableName: aws.String(table)})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Table.KeySchema; len(got) != 1 || aws.ToString(got[0].AttributeName) != ledger.AttrKey || got[0].KeyType != ddbtypes.KeyTypeHash {
		t.Errorf("key schema %+v, want the hash key %s", got, ledger.AttrKey)
	}
	if d.Table.BillingModeSummary == nil || d.Table.BillingModeSummary.BillingMode != ddbtypes.BillingModePayPerRequest {
		t.Errorf("billing mode %+v, want PAY_PER_REQUEST", d.Table.BillingModeSummary)
	}
	ttl, err := api.DescribeTimeToLive(t.Context(), &dynamodb.DescribeTimeToLiveInput{TableName: aws.String(table)})
	if err != nil {
		t.Fatal(err)
	}
	if got := ttl.TimeToLiveDescription; got == nil || aws.ToString(got.AttributeName) != ledger.AttrExpires || got.TimeToLiveStatus != ddbtypes.TimeToLiveStatusEnabled {
		t.Errorf("TTL %+v, want enabled on %s", got, ledger.AttrExpires)
	}
}

// TestClaimOnce: of many concurrent claims on one stage exactly one wins; after Done every
// later claim is refused with the time it was done, and the record holds the fields.
func TestClaimOnce(t *testing.T) {
	l, _, _ := newLedger(t, ledger.Config{})
	ctx := t.Context()
	const n = 16
	var won atomic.Int32
	var winner *ledger.Claim
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			c, err := l.Claim(ctx, "job-1", ledger.Launched)
			switch {
			case err == nil:
				won.Add(1)
				mu.Lock()
				winner = c
				mu.Unlock()
			case errors.Is(err, ledger.ErrTaken):
			default:
				t.Errorf("claim: %v", err)
			}
		})
	}
	wg.Wait()
	if won.Load() != 1 {
		t.Fatalf("%d claims won, want 1", won.Load())
	}
	var te *ledger.TakenError
	if _, err := l.Claim(ctx, "job-1", ledger.Launched); !errors.As(err, &te) || te.DoneAt != "" || te.HeldUntil.IsZero() {
		t.Fatalf("claim while held: %v, want a TakenError with the lease", err)
	}
	if err := winner.Done(ctx, ledger.Fields{"fleet_id": "f-1", "count": 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Claim(ctx, "job-1", ledger.Launched); !errors.As(err, &te) || te.DoneAt == "" {
		t.Fatalf("claim when done: %v, want a TakenError with the time done", err)
	}
	rec, err := l.Get(ctx, "job-1")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Attrs["fleet_id"] != "f-1" || rec.Attrs["count"] != "3" || rec.State() != "launched" || rec.Attrs[ledger.AttrJobID] != "job-1" {
		t.Errorf("record %v, state %s", rec.Attrs, rec.State())
	}
	if _, ok := rec.Attrs["launched_holder"]; ok {
		t.Errorf("the holder stays after Done: %v", rec.Attrs)
	}
	exp := rec.Attrs[ledger.AttrExpires]
	if exp == "" {
		t.Errorf("no TTL attribute: %v", rec.Attrs)
	}
	// Another stage of the same job is claimed independently.
	c, err := l.Claim(ctx, "job-1", ledger.Bootstrapped)
	if err != nil {
		t.Fatalf("claiming the next stage: %v", err)
	}
	c.Release(ctx)
}

// TestReleaseAndExpiry: a released claim is free at once; an abandoned one (its holder
// died: no renewal, no release) is free once its lease ran out, and the dead holder can no
// longer record the stage; a live claim's lease is renewed past its first term.
func TestReleaseAndExpiry(t *testing.T) {
	var crash atomic.Bool
	l, _, _ := newLedger(t, ledger.Config{Lease: 900 * time.Millisecond, Fault: func(string, ledger.Stage) bool { return crash.Load() }})
	ctx := t.Context()

	c, err := l.Claim(ctx, "job-r", ledger.Planned)
	if err != nil {
		t.Fatal(err)
	}
	c.Release(ctx)
	c2, err := l.Claim(ctx, "job-r", ledger.Planned)
	if err != nil {
		t.Fatalf("claim after release: %v", err)
	}

	// Renewed: still held well after its first lease.
	time.Sleep(2 * time.Second)
	if _, err := l.Claim(ctx, "job-r", ledger.Planned); !errors.Is(err, ledger.ErrTaken) {
		t.Fatalf("claim of a live, renewed claim: %v, want ErrTaken", err)
	}
	if err := c2.Checkpoint(); err != nil {
		t.Fatalf("checkpoint without a fault: %v", err)
	}

	crash.Store(true)
	err = c2.Checkpoint()
	if !bus.IsAbandoned(err) {
		t.Fatalf("checkpoint with the fault hook: %v, want an abandon error", err)
	}
	var c3 *ledger.Claim
	cloudtest.Eventually(t, 10*time.Second, func() error {
		c3, err = l.Claim(ctx, "job-r", ledger.Planned)
		return err
	})
	if err := c2.Done(ctx, nil); !errors.Is(err, ledger.ErrLost) {
		t.Fatalf("Done by the dead holder: %v, want ErrLost", err)
	}
	if err := c3.Done(ctx, nil); err != nil {
		t.Fatalf("Done by the new holder: %v", err)
	}
}

// TestKumoExpressions checks, against kumo, the expressions the ledger relies on beyond
// the claim: a condition on a missing item (an upsert), and a number compared with <.
func TestKumoExpressions(t *testing.T) {
	_, api, table := newLedger(t, ledger.Config{})
	ctx := context.Background()
	put := func(cond string, vals map[string]ddbtypes.AttributeValue) error {
		_, err := api.UpdateItem(ctx, &dynamodb.UpdateItemInput{
			TableName: aws.String(table), Key: ledger.Key("k"),
			UpdateExpression:          aws.String("SET n = :n"),
			ConditionExpression:       aws.String(cond),
			ExpressionAttributeValues: vals,
		})
		return err
	}
	n := func(v string) ddbtypes.AttributeValue { return &ddbtypes.AttributeValueMemberN{Value: v} }
	if err := put("attribute_not_exists(n) OR n < :n", map[string]ddbtypes.AttributeValue{":n": n("5")}); err != nil {
		t.Fatalf("upsert on a missing item: %v", err)
	}
	if err := put("attribute_not_exists(n) OR n < :n", map[string]ddbtypes.AttributeValue{":n": n("4")}); err == nil {
		t.Fatal("4 < 5 held")
	}
	if err := put("attribute_not_exists(n) OR n < :n", map[string]ddbtypes.AttributeValue{":n": n("10")}); err != nil {
		t.Fatalf("5 < 10: %v", err) // numeric, not string, comparison
	}
}

type recorder struct {
	mu  sync.Mutex
	got []events.Event
}

func (r *recorder) Publish(_ context.Context, e events.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, e)
	return nil
}

// TestSubmitAndReject: the same submission again is not a reuse, another is, with the
// earlier job's outcome in the answer; a rejection is published once however many stages
// reject the job at once, and never for a job whose fleet was terminated.
func TestSubmitAndReject(t *testing.T) {
	l, _, _ := newLedger(t, ledger.Config{})
	ctx := t.Context()
	for i, tc := range []struct {
		digest string
		reused bool
	}{{"d1", false}, {"d1", false}, {"d2", true}} {
		sub, err := l.Submit(ctx, "job-s", tc.digest)
		if err != nil || sub.Reused != tc.reused {
			t.Fatalf("submission %d (%s): reused %v, %v; want reused %v", i, tc.digest, sub.Reused, err, tc.reused)
		}
	}

	pub := &recorder{}
	rej := ledger.Rejecter{Ledger: l, Publisher: pub, Service: "provisioner"}
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			if err := rej.Reject(ctx, "job-s", "corr-s", "launch template gone"); err != nil {
				t.Errorf("reject: %v", err)
			}
		})
	}
	wg.Wait()
	if len(pub.got) != 1 {
		t.Fatalf("%d rejections published, want 1", len(pub.got))
	}
	ft := pub.got[0].(events.FleetTerminated)
	if ft.Outcome != events.OutcomeRejected || ft.RejectedBy != "provisioner" || ft.Reason != "launch template gone" || ft.JobID != "job-s" || ft.Validate() != nil {
		t.Errorf("rejection %+v (%v)", ft, ft.Validate())
	}
	rec, err := l.Get(ctx, "job-s")
	if err != nil {
		t.Fatal(err)
	}
	if rec.State() != "rejected" || rec.Attrs["outcome"] != events.OutcomeRejected {
		t.Errorf("record %v state %s", rec.Attrs, rec.State())
	}

	// A reuse of the rejected job's id is answered once per distinct submission, naming the outcome.
	sub, err := l.Submit(ctx, "job-s", "d3")
	if err != nil || !sub.Reused {
		t.Fatalf("submission d3: %+v %v", sub, err)
	}
	job := events.JobSubmitted{Header: events.NewHeader("job-s", "corr-3", time.Now())}
	for range 2 {
		if err := rej.RejectReuse(ctx, job, "d3", sub.Earlier); err != nil {
			t.Fatal(err)
		}
	}
	if len(pub.got) != 2 {
		t.Fatalf("%d events after the reuse answered twice, want 2", len(pub.got))
	}
	if r := pub.got[1].(events.FleetTerminated).Reason; !strings.Contains(r, "reused") || !strings.Contains(r, "ended rejected: launch template gone") {
		t.Errorf("reuse answer %q", r)
	}

	// A job whose fleet was terminated is not rejected afterwards.
	c, err := l.Claim(ctx, "job-t", ledger.Terminated)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Done(ctx, ledger.Fields{"outcome": "succeeded"}); err != nil {
		t.Fatal(err)
	}
	if err := rej.Reject(ctx, "job-t", "corr-t", "late"); err != nil || len(pub.got) != 2 {
		t.Errorf("rejecting a terminated job: %v, %d published", err, len(pub.got))
	}
}

// TestCountTaskExactlyOnce: every report of a task delivered many times at once counts
// once; its metric is to be sent until it is marked sent.
func TestCountTaskExactlyOnce(t *testing.T) {
	l, _, _ := newLedger(t, ledger.Config{})
	ctx := t.Context()
	var fresh atomic.Int32
	var wg sync.WaitGroup
	for task := range 10 {
		for range 4 { // four deliveries of each report, at once
			wg.Go(func() {
				outcome := events.OutcomeSucceeded
				if task%5 == 0 {
					outcome = events.OutcomeFailed
				}
				got, err := l.CountTask(ctx, "job-c", fmt.Sprintf("file-%d", task), outcome)
				if err != nil {
					t.Errorf("count: %v", err)
				}
				if got == ledger.TaskNew {
					fresh.Add(1)
				}
			})
		}
	}
	wg.Wait()
	if fresh.Load() != 10 {
		t.Errorf("%d reports counted new, want 10", fresh.Load())
	}
	rec, err := l.Get(ctx, "job-c")
	if err != nil {
		t.Fatal(err)
	}
	if s, f := rec.Tasks(events.OutcomeSucceeded), rec.Tasks(events.OutcomeFailed); s != 8 || f != 2 {
		t.Errorf("counts %d succeeded, %d failed; want 8, 2", s, f)
	}
	if got, err := l.CountTask(ctx, "job-c", "file-1", events.OutcomeSucceeded); err != nil || got != ledger.TaskUnsent {
		t.Errorf("a counted, unsent report again: %v %v, want TaskUnsent", got, err)
	}
	if err := l.MarkTaskSent(ctx, "job-c", "file-1", events.OutcomeSucceeded); err != nil {
		t.Fatal(err)
	}
	if got, err := l.CountTask(ctx, "job-c", "file-1", events.OutcomeSucceeded); err != nil || got != ledger.TaskDuplicate {
		t.Errorf("a counted, sent report again: %v %v, want TaskDuplicate", got, err)
	}
}

// TestReserveWithinCaps: of ten fleets of 3 wanting a cap of 9 instances at once, three
// get theirs; a redelivery keeps its reservation; a release (twice) frees room once; a
// fleet larger than a cap never fits; vCPU and per-template caps hold too.
func TestReserveWithinCaps(t *testing.T) {
	l, _, _ := newLedger(t, ledger.Config{})
	ctx := t.Context()
	lim := ledger.Limits{Instances: 9, VCPUs: 100, TemplateInstances: 50}
	var won atomic.Int32
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			ok, err := l.Reserve(ctx, fmt.Sprintf("job-%d", i), ledger.Reservation{Instances: 3, VCPUs: 6, Template: "demo"}, lim)
			if err != nil {
				t.Errorf("reserve: %v", err)
			}
			if ok {
				won.Add(1)
			}
		})
	}
	wg.Wait()
	if won.Load() != 3 {
		t.Fatalf("%d reservations within a cap of 9 for fleets of 3, want 3", won.Load())
	}
	inst, vcpus, tmpl, err := l.InUse(ctx)
	if err != nil || inst != 9 || vcpus != 18 || tmpl["demo"] != 9 {
		t.Fatalf("in use %d instances, %d vCPUs, %v (%v); want 9, 18, demo=9", inst, vcpus, tmpl, err)
	}
	var holder string
	for i := range 10 {
		if ok, _ := l.Reserve(ctx, fmt.Sprintf("job-%d", i), ledger.Reservation{Instances: 3, VCPUs: 6, Template: "demo"}, lim); ok {
			holder = fmt.Sprintf("job-%d", i) // a redelivery of a holder keeps its reservation
			break
		}
	}
	if holder == "" {
		t.Fatal("no holder kept its reservation on redelivery")
	}
	for range 2 {
		if err := l.Release(ctx, holder); err != nil {
			t.Fatal(err)
		}
	}
	if inst, _, _, _ := l.InUse(ctx); inst != 6 {
		t.Fatalf("after one release (twice) %d in use, want 6", inst)
	}
	if ok, err := l.Reserve(ctx, "job-late", ledger.Reservation{Instances: 3, VCPUs: 6, Template: "demo"}, lim); !ok || err != nil {
		t.Fatalf("reserve after a release: %v %v", ok, err)
	}
	if _, err := l.Reserve(ctx, "job-huge", ledger.Reservation{Instances: 10, Template: "demo"}, lim); !errors.Is(err, ledger.ErrNeverFits) {
		t.Errorf("a fleet over the cap: %v, want ErrNeverFits", err)
	}
	if ok, _ := l.Reserve(ctx, "job-cpu", ledger.Reservation{Instances: 0, VCPUs: 90, Template: "other"}, lim); ok {
		t.Error("90 vCPUs fit beside 18 within 100")
	}
	if ok, _ := l.Reserve(ctx, "job-tmpl", ledger.Reservation{Instances: 2, VCPUs: 2, Template: "small"}, ledger.Limits{TemplateInstances: 1, Instances: 100}); ok {
		t.Error("2 instances fit a template cap of 1")
	}
}

// TestOwnMessageWaitsForItsHolder: the holder's own message delivered again while it runs
// waits for the holder (and then finds the stage done) instead of being acknowledged; a
// duplicate (another message) is refused at once.
func TestOwnMessageWaitsForItsHolder(t *testing.T) {
	l, _, _ := newLedger(t, ledger.Config{Lease: time.Second})
	ctx := bus.WithMessageID(t.Context(), "msg-1")
	c, err := l.Claim(ctx, "job-w", ledger.Bootstrapped)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Claim(bus.WithMessageID(t.Context(), "msg-2"), "job-w", ledger.Bootstrapped); !errors.Is(err, ledger.ErrTaken) {
		t.Fatalf("a duplicate's claim: %v, want ErrTaken at once", err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := l.Claim(ctx, "job-w", ledger.Bootstrapped)
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("the holder's own message returned %v while the holder runs, want it to wait", err)
	case <-time.After(1500 * time.Millisecond): // past a lease: the holder renews it
	}
	if err := c.Done(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		var te *ledger.TakenError
		if !errors.As(err, &te) || te.DoneAt == "" {
			t.Errorf("after the holder is done: %v, want ErrTaken, done", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting claim did not return after the holder was done")
	}
}

// TestExhaustedDeadLetterReason: a message SQS moves to its DLQ after its last delivery
// failed has no reason attribute; the rejecter records its last error by message id.
func TestExhaustedDeadLetterReason(t *testing.T) {
	l, _, _ := newLedger(t, ledger.Config{})
	pub := &recorder{}
	rej := ledger.Rejecter{Ledger: l, Publisher: pub, Service: "bootstrapper"}
	err := rej.OnDeadLetter(t.Context(), bus.DeadLetter{MessageID: "m-42", JobID: "job-x", CorrelationID: "c", EventType: bus.FleetLaunched,
		Queue: "q", DLQ: "q-dlq", Reason: "ssh: connection refused", Exhausted: true})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := l.DeadLetterReason(t.Context(), "m-42"); err != nil || r != "retries exhausted: ssh: connection refused" {
		t.Errorf("recorded reason %q (%v)", r, err)
	}
	if len(pub.got) != 1 || !strings.Contains(pub.got[0].(events.FleetTerminated).Reason, "bootstrapper: retries exhausted") {
		t.Errorf("rejections %+v, want the job rejected with the reason", pub.got)
	}
}

// TestDeadLetterRejects: a dead-lettered message ends its job with a rejection, except a
// task report or a lost instance's notice, which the job's other instances outlive; an
// exhausted one's reason is recorded either way.
func TestDeadLetterRejects(t *testing.T) {
	l, _, _ := newLedger(t, ledger.Config{})
	for _, tt := range []struct {
		eventType  string
		exhausted  bool
		revision   int // the event's plan_revision (0: none)
		wantReject bool
	}{
		{bus.FleetPlanned, false, 1, true},
		{bus.FleetLaunched, true, 1, true},
		{bus.TaskReported, false, 0, false},
		{bus.InstanceLost, false, 1, false},
		{bus.InstanceLost, true, 1, false},
		{bus.FleetPlanned, false, 2, false}, // a replacement: its revision fails, not the job
		{bus.FleetLaunched, true, 3, false},
	} {
		name := fmt.Sprintf("%s-exhausted-%t-rev%d", tt.eventType, tt.exhausted, tt.revision)
		t.Run(name, func(t *testing.T) {
			pub := &recorder{}
			rej := ledger.Rejecter{Ledger: l, Publisher: pub, Service: "reaper"}
			job, msg := "job-dl-"+strings.ToLower(name), "m-"+name
			err := rej.OnDeadLetter(t.Context(), bus.DeadLetter{MessageID: msg, JobID: job, CorrelationID: "c", EventType: tt.eventType,
				Queue: "q", DLQ: "q-dlq", Reason: "bad input", Exhausted: tt.exhausted, PlanRevision: tt.revision})
			if err != nil {
				t.Fatal(err)
			}
			rec, err := l.Get(t.Context(), job)
			if err != nil {
				t.Fatal(err)
			}
			if rejected := rec.DoneAt(ledger.Rejected) != ""; rejected != tt.wantReject || (len(pub.got) == 1) != tt.wantReject {
				t.Errorf("rejected %t, published %+v; want rejected %t", rejected, pub.got, tt.wantReject)
			}
			if st := rec.RevisionState(tt.revision); tt.revision > 1 && !strings.HasPrefix(st, ledger.RevFailed+": reaper: dead-lettered: ") {
				t.Errorf("revision %d's state %q, want failed, dead-lettered", tt.revision, st)
			}
			if r, err := l.DeadLetterReason(t.Context(), msg); err != nil || (r != "") != tt.exhausted {
				t.Errorf("recorded reason %q (%v), want one only when exhausted (%t)", r, err, tt.exhausted)
			}
		})
	}
}
