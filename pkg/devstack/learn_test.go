package devstack

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
)

// TestLearnedRatesMoveThePlan runs jobs through the whole stack: a profile configured far
// too fast (60,000 items a minute on m3.medium) for a workload that takes a few seconds
// whatever the size. The first jobs are planned on one instance at the configured rate
// ("configured; 0 of 2 samples learned"); each one's end records its observed rate in the
// ledger (items over instance-minutes between bootstrap and end); once min_samples (2)
// are in, a larger job is planned at the learned rate on more instances, its rationale
// saying "learned" with the samples.
func TestLearnedRatesMoveThePlan(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts the whole stack")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ops := e2eOps(t)
	profile := "learn-" + cloudtest.Unique("")
	ops.Profiles[profile] = opsconfig.Profile{"m3.medium": {ItemsPerMinute: 60000, BootSeconds: 1, HourlyPrice: 0.067}}
	ops.Recipes["nap3"] = opsconfig.Recipe{Steps: []opsconfig.Step{{
		// One task report: a job without any gives no rate sample.
		Name: "nap", Start: &opsconfig.Start{Argv: []string{"sh", "-c", "sleep 3 && sortie-worker report --task nap --status succeeded --duration 3s"}},
	}}}
	k := 0.0
	ops.Learning = opsconfig.Learning{MinSamples: 2, Alpha: 0.5, SpreadFactor: &k}
	if err := ops.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A prefix of its own: kumo's tables outlive a test's cloud (-count), and the learned
	// rates with them.
	logs := &cloudtest.Buffer{}
	st, err := Start(ctx, Options{Prefix: cloudtest.Unique("l"), Ops: ops, Logger: slog.New(slog.NewJSONHandler(logs, nil)),
		WorkerCommand: []string{"/usr/bin/env", workerEnv + "=1", exe}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, line := range strings.Split(logs.String(), "\n") {
				if strings.Contains(line, "rate") {
					t.Log(line)
				}
			}
		}
		if err := st.Close(); err != nil {
			t.Errorf("closing the stack: %v", err)
		}
	})
	e := &e2e{t: t, Stack: st}
	if e.w, err = st.Watch(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.w.Close(context.Background()) })

	job := func(id string, items int) events.JobSubmitted {
		return events.JobSubmitted{Header: events.NewHeader(id, "corr-"+id, time.Now()), Template: "demo", Profile: profile,
			Recipe: "nap3", Work: events.WorkSource{Count: items}, DeadlineSeconds: 30}
	}
	for i := range 2 {
		id := fmt.Sprintf("learn-%d-%s", i, cloudtest.Unique(""))
		tr := e.run(job(id, 600), 1)
		if tr.Planned == nil || tr.Terminated == nil || tr.Terminated.Outcome != events.OutcomeSucceeded {
			t.Fatalf("job %s: %+v", id, tr)
		}
		want := fmt.Sprintf("60000/min per m3.medium (configured; %d of 2 samples learned", i)
		if tr.Planned.Count != 1 || !strings.Contains(tr.Planned.Rationale, want) {
			t.Fatalf("job %s planned %d instances: %q; want 1 at the configured rate (%q)", id, tr.Planned.Count, tr.Planned.Rationale, want)
		}
		// The reaper records the sample just after FleetTerminated.
		cloudtest.Eventually(t, 20*time.Second, func() error {
			est, err := st.Ledger.LearnedRate(t.Context(), profile, "m3.medium")
			if err != nil {
				return err
			}
			if est.Samples != i+1 {
				return fmt.Errorf("%d samples learned, want %d", est.Samples, i+1)
			}
			return nil
		})
	}
	est, err := st.Ledger.LearnedRate(t.Context(), profile, "m3.medium")
	if err != nil {
		t.Fatal(err)
	}
	// 600 items on one instance in about 3 s of work (from the fleet's bootstrap, recorded
	// just after the workload started, to the monitor's verdict): about 12,000/min; the
	// bounds allow a loaded machine's delays either way.
	if est.Samples != 2 || !(est.Mean > 1000 && est.Mean < 20000) {
		t.Fatalf("learned %+v, want 2 samples of about 600 items in about 3 s (1,000–20,000/min)", est)
	}
	t.Logf("learned %.0f ± %.0f items per instance-minute over %d samples", est.Mean, est.Spread(), est.Samples)

	// A job of 20,000 items: one instance at 60,000/min, ⌈20000 / (learned × 29 s)⌉ ≥ 3 at
	// a learned rate under 20,000/min. Only its plan matters here.
	id := "learn-big-" + cloudtest.Unique("")
	tr := e.run(job(id, 20000), 1)
	p := tr.Planned
	if p == nil || p.Count < 3 || !strings.Contains(p.Rationale, "per m3.medium (learned: ") || !strings.Contains(p.Rationale, "over 2 samples, planned at the mean") {
		t.Fatalf("the job after 2 samples was planned as %+v; want more than one instance at the learned rate", p)
	}
	t.Logf("planned: %s", p.Rationale)
}
