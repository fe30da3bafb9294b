package planner

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/learn"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/sizing"
)

// fakeRates answers LearnedRate from a map, or with err.
type fakeRates struct {
	est   map[string]learn.Estimate // by instance type
	err   error
	calls int
}

func (f *fakeRates) LearnedRate(_ context.Context, profile, instanceType string) (learn.Estimate, error) {
	f.calls++
	if f.err != nil {
		return learn.Estimate{}, f.err
	}
	return f.est[instanceType], nil
}

func TestWithLearned(t *testing.T) {
	cands := []sizing.Candidate{
		{InstanceType: "m3.medium", ItemsPerMinute: 10, BootSeconds: 60, HourlyPrice: 0.067},
		{InstanceType: "c5.large", ItemsPerMinute: 20, BootSeconds: 45, HourlyPrice: 0.17},
	}
	pol := learn.Policy{MinSamples: 5, SpreadFactor: 2}
	tests := []struct {
		name    string
		rates   rateReader
		pol     learn.Policy
		want    []float64
		sources []string
		reads   int
	}{
		{"nil reader: configured", nil, pol, []float64{10, 20}, []string{"configured; 0 of 5", "configured; 0 of 5"}, 0},
		{"learning off: not even read", &fakeRates{}, learn.Policy{MinSamples: 5, SpreadFactor: 2, Off: true}, []float64{10, 20}, []string{"configured; learning off", "configured; learning off"}, 0},
		{"no samples", &fakeRates{}, pol, []float64{10, 20}, []string{"configured; 0 of 5", "configured; 0 of 5"}, 2},
		{"one type learned, the other short of samples", &fakeRates{est: map[string]learn.Estimate{
			"m3.medium": {Mean: 8, Variance: 0.25, Samples: 6},
			"c5.large":  {Mean: 25, Variance: 1, Samples: 4},
		}}, pol, []float64{7, 20}, []string{"learned: 8 ± 0.5/min over 6 samples, planned at mean − 2σ", "configured; 4 of 5 samples learned (25 ± 1/min)"}, 2},
		{"ledger unreadable: configured, and said", &fakeRates{err: errors.New("ResourceNotFoundException: " + strings.Repeat("x", 500))}, pol,
			[]float64{10, 20}, []string{"configured; learned rates unreadable: ResourceNotFoundException: xxx", "unreadable"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := withLearned(t.Context(), tt.rates, tt.pol, "files", cands)
			for i, c := range got {
				if math.Abs(c.ItemsPerMinute-tt.want[i]) > 1e-9 || !strings.Contains(c.RateSource, tt.sources[i]) {
					t.Errorf("candidate %s: %v/min (%s), want %v/min (%s)", c.InstanceType, c.ItemsPerMinute, c.RateSource, tt.want[i], tt.sources[i])
				}
				if len(c.RateSource) > maxSourceError+200 {
					t.Errorf("candidate %s: source of %d bytes, want the error clipped", c.InstanceType, len(c.RateSource))
				}
			}
			if cands[0].RateSource != "" || cands[0].ItemsPerMinute != 10 {
				t.Errorf("the configured candidates were changed: %+v", cands[0])
			}
			if f, ok := tt.rates.(*fakeRates); ok && f.calls != tt.reads {
				t.Errorf("%d reads, want %d", f.calls, tt.reads)
			}
		})
	}
}

// TestPlanMovesWithLearnedRates: the seed's job (202 files, 10 minutes, the files profile
// configured at 10/min on m3.medium with a 60 s boot) is planned on 3 instances while the
// ledger holds fewer than min_samples samples, the rationale saying "configured"; once
// the reaper's samples of a slower true rate (6/min ± 0.3, seeded) pass min_samples, it
// is planned on more instances at the learned rate, the rationale saying "learned" with
// the samples and the spread. The ledger is kumo's DynamoDB through the local cloud.
func TestPlanMovesWithLearnedRates(t *testing.T) {
	st := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	l := st.Ledger()
	ops := opsconfig.Default()
	ops.Learning = opsconfig.Learning{MinSamples: 5, Alpha: 0.3}
	pub := &cloudtest.Recorder{}
	h := handler{planner: &planner{ops: ops, now: func() time.Time { return planned }, rates: l}, pub: pub, ledger: l}
	planJob := func(id string) events.FleetPlanned {
		t.Helper()
		job := with(seedJob(), func(j *events.JobSubmitted) { j.JobID = id })
		before := len(pub.Published)
		if err := h.handle(t.Context(), &bus.Message{Payload: cloudtest.Encode(t, job)}); err != nil {
			t.Fatalf("planning %s: %v", id, err)
		}
		if len(pub.Published) != before+1 {
			t.Fatalf("planning %s published %d events", id, len(pub.Published)-before)
		}
		return pub.Published[before].(events.FleetPlanned)
	}
	r := rand.New(rand.NewPCG(9, 9))
	record := func(n int) learn.Estimate {
		t.Helper()
		var rec ledger.Recorded
		for range n {
			s := learn.Sample{Profile: "files", InstanceType: "m3.medium", Rate: 6 + 0.3*r.NormFloat64()}
			var err error
			if rec, err = l.Learn(t.Context(), fmt.Sprintf("done-%d", r.Uint64()), s, ops.Learning.WithDefaults().Alpha); err != nil || !rec.Counted {
				t.Fatalf("Learn: %+v, %v", rec, err)
			}
		}
		return rec.Estimate
	}

	first := planJob("job-before")
	if first.Count != 3 || !strings.Contains(first.Rationale, "10/min per m3.medium (configured; 0 of 5 samples learned)") {
		t.Fatalf("plan with no samples: %d instances, %q; want 3 at the configured rate", first.Count, first.Rationale)
	}
	est := record(4)
	short := planJob("job-short")
	if short.Count != 3 || !strings.Contains(short.Rationale, "10/min per m3.medium (configured; 4 of 5 samples learned") {
		t.Fatalf("plan with 4 samples: %d instances, %q; want 3 at the configured rate", short.Count, short.Rationale)
	}
	est = record(8)
	if math.Abs(est.Mean-6) > 0.5 || est.Samples != 12 {
		t.Fatalf("estimate after 12 samples %+v, want a mean within 0.5 of 6", est)
	}
	learned := planJob("job-learned")
	rate := est.Mean - opsconfig.DefaultSpreadFactor*est.Spread()
	// The count the sizing gives at the learned rate: 202 items in 540 s of work.
	want := int(math.Ceil(202 / (rate * 9)))
	if learned.Count != want || learned.Count <= 3 || !learned.MeetsDeadline {
		t.Fatalf("plan after 12 samples: %d instances (meets %t), want %d at %.2f/min: %s", learned.Count, learned.MeetsDeadline, want, rate, learned.Rationale)
	}
	for _, s := range []string{"per m3.medium (learned: ", "over 12 samples", "planned at mean − 2.5σ", fmt.Sprintf("± %s/min", strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", est.Spread()), "0"), "."))} {
		if !strings.Contains(learned.Rationale, s) {
			t.Errorf("rationale %q lacks %q", learned.Rationale, s)
		}
	}
}

// TestPlanWithUnreadableLedger: learned rates that cannot be read (here: a table that
// does not exist) leave the configured rates; the plan is made and its rationale says so.
func TestPlanWithUnreadableLedger(t *testing.T) {
	st := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	missing, err := ledger.New(ledger.Config{API: dynamodb.NewFromConfig(st.AWS), Table: st.Topology.Prefix + "-no-such-table"})
	if err != nil {
		t.Fatal(err)
	}
	p := &planner{ops: opsconfig.Default(), now: func() time.Time { return planned }, rates: missing}
	plan, err := p.plan(t.Context(), seedJob())
	if err != nil {
		t.Fatalf("plan with an unreadable ledger: %v", err)
	}
	if plan.Count != 3 || !strings.Contains(plan.Rationale, "10/min per m3.medium (configured; learned rates unreadable: reading the learned rate of files on m3.medium") {
		t.Fatalf("plan: %d instances, %q; want 3 at the configured rate, saying the learned rates were unreadable", plan.Count, plan.Rationale)
	}
}
