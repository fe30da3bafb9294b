package monitor

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/recipe"
)

// instanceCheck is what one check saw on one instance.
type instanceCheck struct {
	ID  string
	Err error // the instance could not be checked over SSH: a miss
	// Steps holds every start step's status, in recipe order (when Err is nil).
	Steps []stepCheck
}

// stepCheck is one start step's workload on one instance.
type stepCheck struct {
	Step   string
	Status recipe.Status
	// Tail is the last lines of the workload's log (of its stderr when the log is empty),
	// fetched when the workload failed, or is still running past the deadline.
	Tail []string
	// LogSize is the size of the workload's log in bytes, read for a live workload with a
	// stall window; -1 when not read.
	LogSize int64
}

// failed reports whether the workload has ended badly.
func (s stepCheck) failed() bool {
	switch s.Status.State {
	case recipe.StateExited:
		return s.Status.ExitCode != 0
	case recipe.StateDead, recipe.StateNotStarted:
		return true
	}
	return false
}

// live reports whether the workload may still be working.
func (s stepCheck) live() bool {
	return s.Status.State == recipe.StateRunning || s.Status.State == recipe.StateStarting
}

// verdict is a check's decision. Done is false while the job is still running.
type verdict struct {
	Done            bool
	Outcome         string
	Reason          string
	FailingInstance string
	LogTail         []string
	Alive           int // instances with a live workload
}

// checkState is what decide needs besides the checks.
type checkState struct {
	Misses       map[string]int // consecutive misses per instance before this check
	MaxMisses    int
	Deadline     time.Time // the job's deadline
	Grace        time.Duration
	PastDeadline bool // the check ran after Deadline + Grace
}

// decide turns one check of every instance into a verdict, and the updated count of
// consecutive misses. In order of precedence: a workload that exited non-zero, died or
// never started fails the job (the first such in instance and step order is the failing
// one, its log tail the job's); an instance unreachable at MaxMisses checks in a row
// fails it; every workload exited 0 succeeds it; past the deadline and grace it times
// out; otherwise it goes on.
func decide(checks []instanceCheck, st checkState) (verdict, map[string]int) {
	misses := map[string]int{}
	var v verdict
	allDone := true
	var running []string
	lastErr := map[string]error{}
	firstRunningTail := map[string][]string{}
	for _, c := range checks {
		if c.Err != nil {
			misses[c.ID] = st.Misses[c.ID] + 1
			lastErr[c.ID] = c.Err
			allDone = false
			continue
		}
		alive := false
		for _, s := range c.Steps {
			switch {
			case s.failed() && !v.Done:
				v.Done, v.Outcome, v.Reason = true, events.OutcomeFailed, failureReason(c.ID, s)
				v.FailingInstance, v.LogTail = c.ID, s.Tail
			case s.live():
				allDone = false
				alive = true
				if _, ok := firstRunningTail[c.ID]; !ok {
					firstRunningTail[c.ID] = s.Tail
					running = append(running, c.ID)
				}
			}
		}
		if alive {
			v.Alive++
		}
	}
	if v.Done {
		return v, misses
	}
	for _, c := range checks {
		if n := misses[c.ID]; n >= st.MaxMisses {
			v.Done, v.Outcome, v.FailingInstance = true, events.OutcomeFailed, c.ID
			v.Reason = fmt.Sprintf("instance %s unreachable over SSH at %d checks in a row: %v", c.ID, n, lastErr[c.ID])
			return v, misses
		}
	}
	switch {
	case allDone:
		v.Done, v.Outcome = true, events.OutcomeSucceeded
		v.Reason = fmt.Sprintf("every workload exited 0 on %d instances", len(checks))
	case st.PastDeadline:
		v.Done, v.Outcome = true, events.OutcomeTimedOut
		still := running
		for _, c := range checks {
			if c.Err != nil {
				still = append(still, c.ID+" (unreachable)")
			}
		}
		v.Reason = fmt.Sprintf("deadline %s plus grace %s passed with workloads still running on %s",
			st.Deadline.UTC().Format(time.RFC3339), st.Grace, listIDs(still, 20))
		if len(running) > 0 {
			v.FailingInstance, v.LogTail = running[0], firstRunningTail[running[0]]
		} else {
			for _, c := range checks {
				if c.Err != nil {
					v.FailingInstance = c.ID
					break
				}
			}
		}
	}
	return v, misses
}

func failureReason(id string, s stepCheck) string {
	switch s.Status.State {
	case recipe.StateExited:
		return fmt.Sprintf("workload %s on %s exited %d", s.Step, id, s.Status.ExitCode)
	case recipe.StateDead:
		return fmt.Sprintf("workload %s on %s died without recording an exit code", s.Step, id)
	default:
		return fmt.Sprintf("workload %s on %s never started", s.Step, id)
	}
}

// listIDs lists at most max ids and counts the rest.
func listIDs(ids []string, max int) string {
	if len(ids) <= max {
		return strings.Join(ids, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(ids[:max], ", "), len(ids)-max)
}

// bootstrapVerdict fails a fleet on which the recipe failed somewhere: the first failed
// instance is the failing one, its failing step's output the log tail.
func bootstrapVerdict(e events.FleetBootstrapped) (verdict, bool) {
	var failed []string
	var v verdict
	for _, in := range e.Instances {
		if in.OK {
			continue
		}
		failed = append(failed, in.ID)
		if len(failed) > 1 {
			continue
		}
		v = verdict{Done: true, Outcome: events.OutcomeFailed, FailingInstance: in.ID}
		v.Reason = fmt.Sprintf("bootstrap failed on %s: %s", in.ID, in.Error)
		for _, s := range in.Steps {
			if s.ExitCode != 0 {
				v.LogTail = s.OutputTail
				break
			}
		}
	}
	if len(failed) == 0 {
		return verdict{}, false
	}
	v.Reason += fmt.Sprintf(" (%d of %d instances failed: %s)", len(failed), len(e.Instances), listIDs(failed, 20))
	return v, true
}

// jobFinished is the JobFinished of a fleet with a verdict: every instance listed, and the
// workloads' logs outside recipe.StateRoot, so that the reaper archives and terminates
// them all. Task totals are filled in later.
func jobFinished(e events.FleetBootstrapped, v verdict, wl []recipe.Workload, now time.Time) events.JobFinished {
	jf := events.JobFinished{
		Header:          events.NewHeader(e.JobID, e.CorrelationID, now),
		FleetID:         e.FleetID,
		Template:        e.Template,
		Outcome:         v.Outcome,
		Reason:          clipText(v.Reason, events.MaxTextBytes),
		FailingInstance: v.FailingInstance,
		HostKey:         e.HostKey,
		KeyName:         e.KeyName,
		Logs:            logPaths(wl),
	}
	for _, in := range e.Instances {
		jf.Instances = append(jf.Instances, events.InstanceRef{ID: in.ID, SSHEndpoint: in.SSHEndpoint, HostKey: in.HostKey})
	}
	jf.LogTail = sanitizeTail(v.LogTail)
	return jf
}

// encodeFinished encodes jf, shortening its log tail's lines (then dropping its oldest
// lines) until the body fits events.MaxBodyBytes.
func encodeFinished(jf events.JobFinished) ([]byte, error) {
	for _, limit := range []int{events.MaxTextBytes, 1024, 256, 80} {
		for i, l := range jf.LogTail {
			jf.LogTail[i] = clipText(l, limit)
		}
		body, err := events.Encode(jf)
		if err == nil || len(jf.LogTail) == 0 {
			return body, err
		}
	}
	for len(jf.LogTail) > 0 {
		jf.LogTail = jf.LogTail[1:]
		if body, err := events.Encode(jf); err == nil {
			return body, nil
		}
	}
	return events.Encode(jf)
}

// sanitizeTail makes output lines valid event text: the last events.MaxTailLines lines,
// valid UTF-8 without NUL bytes, each at most events.MaxTextBytes.
func sanitizeTail(lines []string) []string {
	if len(lines) > events.MaxTailLines {
		lines = lines[len(lines)-events.MaxTailLines:]
	}
	if len(lines) == 0 {
		return nil
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = clipText(l, events.MaxTextBytes)
	}
	return out
}

// clipText cuts s to at most n bytes of valid UTF-8 without NUL bytes.
func clipText(s string, n int) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// The misses attribute carries the consecutive misses of the instances that missed the
// last check, as "i-0abc=2,i-0def=1".

func encodeMisses(m map[string]int) string {
	var parts []string
	for _, id := range slices.Sorted(maps.Keys(m)) {
		if m[id] > 0 {
			parts = append(parts, id+"="+strconv.Itoa(m[id]))
		}
	}
	return strings.Join(parts, ",")
}

func decodeMisses(s string) (map[string]int, error) {
	m := map[string]int{}
	if s == "" {
		return m, nil
	}
	for _, part := range strings.Split(s, ",") {
		id, n, ok := strings.Cut(part, "=")
		count, err := strconv.Atoi(n)
		if !ok || id == "" || err != nil || count < 0 {
			return nil, errors.New("misses attribute: want id=count pairs separated by commas, got " + strconv.Quote(s))
		}
		m[id] = count
	}
	return m, nil
}
