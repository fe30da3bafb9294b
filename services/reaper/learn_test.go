package reaper_test

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// TestReaperLearnsRates: a succeeded job's end records its rate (items over instances ×
// the minutes between its fleet's bootstrap and its end) in the ledger's estimate of its
// profile on its instance type, once however often its JobFinished is delivered; a failed
// job gives no sample and says why.
func TestReaperLearnsRates(t *testing.T) {
	e := newEnv(t)
	out := e.Subscribe(t, bus.FleetTerminated)
	hk := cloudtest.NewHostKey(t)
	l := e.Ledger()
	live := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	profile := "learn" + strings.ToLower(cloudtest.Unique("-"))

	// fleet launches a job's n instances and writes the ledger record the planner and the
	// bootstrapper leave: the plan's profile and items, the bootstrap's time, just after
	// the last launch.
	fleet := func(jobID string, n, items int) ([]events.InstanceRef, time.Time) {
		t.Helper()
		refs := e.launch(n, hk.UserData, map[string]string{tags.Stack: e.Topology.Prefix, tags.JobID: jobID, tags.Fleet: jobID, tags.LeaseExpires: live})
		var ids []string
		for _, r := range refs {
			ids = append(ids, r.ID)
		}
		start := slices.MaxFunc(e.launchTimes(ids...), time.Time.Compare).Add(time.Millisecond)
		if err := l.Note(t.Context(), jobID, ledger.Fields{"profile": profile, "items": items, "instance_type": "t3.micro", "count": n,
			"bootstrapped_at": start, "bootstrapped_ok": n, "bootstrapped_failed": 0}); err != nil {
			t.Fatal(err)
		}
		// A window of at least a second, so the rate is a number the test can check.
		cloudtest.Eventually(t, 10*time.Second, func() error {
			if time.Since(start) < time.Second {
				return fmt.Errorf("bootstrapped %s ago", time.Since(start))
			}
			return nil
		})
		return refs, start
	}
	finished := func(jobID, outcome string, refs []events.InstanceRef, succeeded int) events.JobFinished {
		ev := events.JobFinished{Header: events.NewHeader(jobID, "corr-"+jobID, time.Now()), FleetID: jobID, Template: "test",
			Outcome: outcome, Instances: refs, HostKey: hk.Authorized, KeyName: e.key.Name, TasksSucceeded: succeeded}
		if outcome != events.OutcomeSucceeded {
			ev.Reason = "worker exited with status 1"
		}
		return ev
	}
	e.start()

	okJob := "job-learn-ok" + cloudtest.Unique("-")
	refs, start := fleet(okJob, 2, 120)
	ev := finished(okJob, events.OutcomeSucceeded, refs, 120)
	e.Publish(t, ev)
	e.receive(t, out, okJob)
	want := 120 / (2 * ev.Time.Sub(start).Minutes())
	var est ledger.Learned
	cloudtest.Eventually(t, 20*time.Second, func() error {
		all, err := ledger.ListLearned(t.Context(), dynamodb.NewFromConfig(e.AWS), e.Topology.LedgerTableName())
		if err != nil {
			return err
		}
		for _, le := range all {
			if le.Profile == profile {
				est = le
				return nil
			}
		}
		return fmt.Errorf("no learned rate of %s yet (%d others)", profile, len(all))
	})
	if est.InstanceType != "t3.micro" || est.Samples != 1 || math.Abs(est.Mean-want) > 1e-6*want || est.Variance != 0 {
		t.Fatalf("learned %+v, want 1 sample of %.3f/min on t3.micro", est, want)
	}

	// The same JobFinished again: the fleet is reaped already, nothing is counted twice.
	e.Publish(t, ev)
	cloudtest.Eventually(t, 20*time.Second, func() error {
		if !strings.Contains(e.Logs.String(), `"msg":"duplicate JobFinished: nothing to do"`) {
			return fmt.Errorf("the duplicate not handled yet")
		}
		return nil
	})

	// A failed job of the same profile: no sample, and the log says why.
	badJob := "job-learn-bad" + cloudtest.Unique("-")
	refs, _ = fleet(badJob, 1, 50)
	e.Publish(t, finished(badJob, events.OutcomeFailed, refs, 10))
	e.receive(t, out, badJob)
	cloudtest.Eventually(t, 20*time.Second, func() error {
		for _, line := range strings.Split(e.Logs.String(), "\n") {
			if strings.Contains(line, `"fleet_id":"`+badJob+`"`) && strings.Contains(line, `"msg":"no rate sample from this job"`) &&
				strings.Contains(line, "no rate sample: the job failed") {
				return nil
			}
		}
		return fmt.Errorf("no log saying why %s gave no sample", badJob)
	})
	got, err := l.LearnedRate(t.Context(), profile, "t3.micro")
	if err != nil || got.Samples != 1 || math.Abs(got.Mean-want) > 1e-6*want {
		t.Fatalf("after a duplicate and a failed job: %+v, %v; want still 1 sample of %.3f", got, err, want)
	}
}
