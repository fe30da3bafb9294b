package monitor

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/recipe"
)

func TestStalled(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	wl := []recipe.Workload{
		{Step: "work", Log: "logs/work.log", StallWindow: 30 * time.Second},
		{Step: "side", Log: "logs/side.log"}, // no progress signal
	}
	running := func(step string, size int64) stepCheck {
		return stepCheck{Step: step, Status: recipe.Status{State: recipe.StateRunning, PID: 7}, LogSize: size}
	}
	exited := stepCheck{Step: "work", Status: recipe.Status{State: recipe.StateExited}, LogSize: -1}
	tests := []struct {
		name        string
		checks      []instanceCheck
		prev        map[string]progressMark
		now         time.Time
		wantFailing string // "" for no stall
		wantMarks   map[string]progressMark
	}{
		{
			name:      "first sight: marked now, no stall",
			checks:    []instanceCheck{{ID: "i-1", Steps: []stepCheck{running("work", 10), running("side", 5)}}},
			now:       t0,
			wantMarks: map[string]progressMark{"i-1/work": {10, t0}},
		},
		{
			name:      "grew: marked again",
			checks:    []instanceCheck{{ID: "i-1", Steps: []stepCheck{running("work", 20)}}},
			prev:      map[string]progressMark{"i-1/work": {10, t0}},
			now:       t0.Add(time.Minute),
			wantMarks: map[string]progressMark{"i-1/work": {20, t0.Add(time.Minute)}},
		},
		{
			name:      "still, within the window",
			checks:    []instanceCheck{{ID: "i-1", Steps: []stepCheck{running("work", 10)}}},
			prev:      map[string]progressMark{"i-1/work": {10, t0}},
			now:       t0.Add(29 * time.Second),
			wantMarks: map[string]progressMark{"i-1/work": {10, t0}},
		},
		{
			name: "still for the window: the first stalled one fails",
			checks: []instanceCheck{
				{ID: "i-1", Steps: []stepCheck{running("work", 11)}},
				{ID: "i-2", Steps: []stepCheck{running("work", 10)}},
				{ID: "i-3", Steps: []stepCheck{running("work", 10)}},
			},
			prev:        map[string]progressMark{"i-1/work": {10, t0}, "i-2/work": {10, t0}, "i-3/work": {10, t0}},
			now:         t0.Add(30 * time.Second),
			wantFailing: "i-2",
			wantMarks:   map[string]progressMark{"i-1/work": {11, t0.Add(30 * time.Second)}, "i-2/work": {10, t0}, "i-3/work": {10, t0}},
		},
		{
			name:      "exited, unreachable or size unread: not judged, mark dropped",
			checks:    []instanceCheck{{ID: "i-1", Steps: []stepCheck{exited}}, {ID: "i-2", Err: errors.New("dial: refused")}, {ID: "i-3", Steps: []stepCheck{running("work", -1)}}},
			prev:      map[string]progressMark{"i-1/work": {10, t0}, "i-3/work": {10, t0}},
			now:       t0.Add(time.Hour),
			wantMarks: map[string]progressMark{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, w, marks := stalled(tt.checks, wl, tt.prev, tt.now, -1)
			if v.Done != (tt.wantFailing != "") || v.FailingInstance != tt.wantFailing {
				t.Fatalf("verdict %+v, want failing %q", v, tt.wantFailing)
			}
			if v.Done && (v.Outcome != events.OutcomeFailed || w.Step != "work" || !strings.Contains(v.Reason, "made no progress: its log logs/work.log stayed at 10 bytes for 30s (stall window 30s)")) {
				t.Errorf("verdict %+v on %+v", v, w)
			}
			if encodeProgress(marks) != encodeProgress(tt.wantMarks) {
				t.Errorf("marks %v, want %v", marks, tt.wantMarks)
			}
		})
	}
}

func TestProgressAttribute(t *testing.T) {
	m := map[string]progressMark{"i-2/work": {5, time.Unix(1700000001, 0)}, "i-1/work": {0, time.Unix(1700000000, 0)}}
	s := encodeProgress(m)
	if s != "i-1/work=0@1700000000,i-2/work=5@1700000001" {
		t.Fatalf("encoded %q", s)
	}
	got, err := decodeProgress(s)
	if err != nil || encodeProgress(got) != s {
		t.Fatalf("decoded %v, %v", got, err)
	}
	for _, bad := range []string{"x", "i-1=5@1", "i-1/work=-1@5", "i-1/work=5", "i-1/work=a@1"} {
		if _, err := decodeProgress(bad); err == nil {
			t.Errorf("decodeProgress(%q) accepted", bad)
		}
	}
}

func TestStalledOnTasks(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	wl := []recipe.Workload{{Step: "count", StallWindow: 30 * time.Second, Signal: opsconfig.ProgressTasks}}
	live := []instanceCheck{
		{ID: "i-1", Steps: []stepCheck{{Step: "count", Status: recipe.Status{State: recipe.StateRunning, PID: 3}, LogSize: -1}}},
		{ID: "i-2", Steps: []stepCheck{{Step: "count", Status: recipe.Status{State: recipe.StateRunning, PID: 4}, LogSize: -1}}},
	}
	prev := map[string]progressMark{"tasks/count": {5, t0}}
	tests := []struct {
		name      string
		tasks     int64
		now       time.Time
		wantStall bool
		wantMark  progressMark
	}{
		{"rose: marked now", 6, t0.Add(time.Minute), false, progressMark{6, t0.Add(time.Minute)}},
		{"still, within the window", 5, t0.Add(29 * time.Second), false, progressMark{5, t0}},
		{"still for the window: stalled, once for the job", 5, t0.Add(30 * time.Second), true, progressMark{5, t0}},
		{"count unknown: not judged", -1, t0.Add(time.Hour), false, progressMark{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, _, marks := stalled(live, wl, prev, tt.now, tt.tasks)
			if v.Done != tt.wantStall {
				t.Fatalf("verdict %+v, want stalled %v", v, tt.wantStall)
			}
			if v.Done && (v.FailingInstance != "i-1" || v.Reason != "workload count made no progress: the job's reported tasks stayed at 5 for 30s (stall window 30s); running on i-1") {
				t.Errorf("verdict %+v", v)
			}
			if marks["tasks/count"] != tt.wantMark || len(marks) > 1 {
				t.Errorf("marks %v, want tasks/count %v only", marks, tt.wantMark)
			}
		})
	}
}
