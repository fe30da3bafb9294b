package worker

import (
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/events"
)

func TestExitReport(t *testing.T) {
	env := JobEnv{JobID: "job-1", CorrelationID: "corr-1", FleetID: "job-1", InstanceID: "i-0123456789abcdef0", Prefix: "sortie"}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name    string
		step    string
		code    int
		outcome string
		bad     bool
	}{
		{"zero succeeds", "worker", 0, events.OutcomeSucceeded, false},
		{"non-zero fails", "worker", 3, events.OutcomeFailed, false},
		{"killed by a signal", "worker", 137, events.OutcomeFailed, false},
		{"code out of range", "worker", 256, "", true},
		{"no step", "", 0, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := ExitReport(env, tc.step, tc.code, now)
			if tc.bad {
				if err == nil {
					t.Fatalf("want an error, got %+v", e)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !e.Exited() || *e.ExitCode != tc.code || e.Outcome != tc.outcome || e.TaskID != tc.step || e.InstanceID != env.InstanceID || e.JobID != env.JobID {
				t.Errorf("report %+v", e)
			}
			b, err := events.Encode(e)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := events.DecodeTaskReported(b); err != nil {
				t.Errorf("the monitor would refuse it: %v", err)
			}
		})
	}
}
