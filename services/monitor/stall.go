package monitor

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/recipe"
)

// AttrProgress is the check timer's attribute carrying the progress seen so far (see
// encodeProgress).
const AttrProgress = "sortie_progress"

// progressMark is the last change of a workload's log: its size and when the monitor first
// saw it at that size.
type progressMark struct {
	Size int64
	At   time.Time
}

// progressKey names one workload on one instance.
func progressKey(instanceID, step string) string { return instanceID + "/" + step }

// stalled judges the progress signals of one check. A live workload whose signal has not
// moved since a mark at least a stall window old has stalled, and fails the job (the first
// such in instance and step order): for the log signal, its log on that instance; for the
// tasks signal, the job's count of reported tasks (tasks; < 0 when unknown), judged once
// for the job on the first instance where the workload is live. It returns the verdict
// (Done false when nothing stalled), the stalled workload, and the marks to carry to the
// next check: a signal that moved, or is seen for the first time, is marked now.
func stalled(checks []instanceCheck, wl []recipe.Workload, prev map[string]progressMark, now time.Time, tasks int64) (verdict, recipe.Workload, map[string]progressMark) {
	window := map[string]time.Duration{}
	byStep := map[string]recipe.Workload{}
	for _, w := range wl {
		window[w.Step] = w.StallWindow
		byStep[w.Step] = w
	}
	next := map[string]progressMark{}
	var v verdict
	var which recipe.Workload
	for _, c := range checks {
		for _, s := range c.Steps {
			if window[s.Step] <= 0 || !s.live() {
				continue
			}
			w := byStep[s.Step]
			key, value := progressKey(c.ID, s.Step), s.LogSize
			if w.Signal == opsconfig.ProgressTasks {
				key, value = progressKey("tasks", s.Step), tasks
				if _, judged := next[key]; judged {
					continue
				}
			}
			if value < 0 {
				continue
			}
			mark, ok := prev[key]
			if !ok || value != mark.Size {
				mark = progressMark{Size: value, At: now}
			}
			next[key] = mark
			if still := now.Sub(mark.At); !v.Done && still >= window[s.Step] {
				v = verdict{Done: true, Outcome: events.OutcomeFailed, FailingInstance: c.ID}
				if w.Signal == opsconfig.ProgressTasks {
					v.Reason = fmt.Sprintf("workload %s made no progress: the job's reported tasks stayed at %d for %s (stall window %s); running on %s",
						s.Step, value, still.Round(time.Second), window[s.Step], c.ID)
				} else {
					v.Reason = fmt.Sprintf("workload %s on %s made no progress: its log %s stayed at %d bytes for %s (stall window %s)",
						s.Step, c.ID, w.Log, value, still.Round(time.Second), window[s.Step])
				}
				which = w
			}
		}
	}
	return v, which, next
}

// tasksSignal reports whether a workload's progress signal is the job's task count.
func tasksSignal(wl []recipe.Workload) bool {
	for _, w := range wl {
		if w.StallWindow > 0 && w.Signal == opsconfig.ProgressTasks {
			return true
		}
	}
	return false
}

// encodeProgress writes marks as "i-0abc/work=1234@1733150000,..." (size in bytes, Unix
// seconds), sorted.
func encodeProgress(m map[string]progressMark) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s=%d@%d", k, m[k].Size, m[k].At.Unix()))
	}
	return strings.Join(parts, ",")
}

func decodeProgress(s string) (map[string]progressMark, error) {
	m := map[string]progressMark{}
	if s == "" {
		return m, nil
	}
	bad := errors.New("progress attribute: want instance/step=size@unix pairs separated by commas, got " + strconv.Quote(s))
	for _, part := range strings.Split(s, ",") {
		key, val, ok := strings.Cut(part, "=")
		size, at, ok2 := strings.Cut(val, "@")
		n, err1 := strconv.ParseInt(size, 10, 64)
		u, err2 := strconv.ParseInt(at, 10, 64)
		if !ok || !ok2 || !strings.Contains(key, "/") || err1 != nil || err2 != nil || n < 0 {
			return nil, bad
		}
		m[key] = progressMark{Size: n, At: time.Unix(u, 0)}
	}
	return m, nil
}
