package worker

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/events"
)

func TestReportTaskReported(t *testing.T) {
	env := JobEnv{JobID: "job-1", CorrelationID: "corr-1", FleetID: "job-1", InstanceID: "i-0123456789abcdef0", Prefix: "sortie"}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name    string
		r       Report
		env     func(*JobEnv)
		wantErr []string
	}{
		{name: "succeeded", r: Report{Task: "Install packages", Outcome: events.OutcomeSucceeded, Duration: 1500 * time.Millisecond}},
		{name: "failed with detail", r: Report{Task: "t", Outcome: events.OutcomeFailed, Detail: "exit 3"}},
		{name: "unknown outcome", r: Report{Task: "t", Outcome: "ok"}, wantErr: []string{"outcome"}},
		{name: "empty task", r: Report{Outcome: events.OutcomeSucceeded}, wantErr: []string{"task_id"}},
		{name: "task with a line break", r: Report{Task: "a\nb", Outcome: events.OutcomeSucceeded}, wantErr: []string{"task_id"}},
		{name: "negative duration", r: Report{Task: "t", Outcome: events.OutcomeSucceeded, Duration: -time.Second}, wantErr: []string{"duration"}},
		{
			name: "every problem at once", r: Report{Outcome: "maybe", Duration: -time.Second},
			env:     func(e *JobEnv) { e.InstanceID = "not-an-instance" },
			wantErr: []string{"task_id", "outcome", "duration", "instance_id"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := env
			if tt.env != nil {
				tt.env(&e)
			}
			ev, err := tt.r.TaskReported(e, now)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("accepted %+v", tt.r)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %s", err, w)
					}
				}
				if !errors.Is(err, events.ErrInvalid) && !strings.Contains(err.Error(), "duration") {
					t.Errorf("error %v does not wrap events.ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ev.TaskID != tt.r.Task || ev.Outcome != tt.r.Outcome || ev.DurationMS != tt.r.Duration.Milliseconds() ||
				ev.Detail != tt.r.Detail || ev.JobID != "job-1" || ev.InstanceID != env.InstanceID || !ev.Time.Equal(now) {
				t.Errorf("event %+v does not carry the report %+v", ev, tt.r)
			}
		})
	}
}
