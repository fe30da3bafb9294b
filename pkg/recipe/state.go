package recipe

import (
	"fmt"
	"path"
	"strconv"
	"strings"
)

// StateRoot holds a state directory per start step, relative to the login directory.
const StateRoot = ".sortie"

// DefaultTailLines is how many log lines TailCommand shows when asked for none.
const DefaultTailLines = 50

// StateDir is a start step's state directory: .sortie/STEP.
func StateDir(step string) string { return path.Join(StateRoot, step) }

// StartedPath is the marker a start step creates exclusively before it launches its workload.
func StartedPath(step string) string { return path.Join(StateDir(step), "started") }

// PIDPath holds the workload's process id.
func PIDPath(step string) string { return path.Join(StateDir(step), "pid") }

// ExitCodePath holds the workload's exit status once it has ended.
func ExitCodePath(step string) string { return path.Join(StateDir(step), "exit_code") }

// LogRecordPath holds the path of the workload's log (relative to the login directory),
// written when the step starts: what `sortie logs --follow` tails.
func LogRecordPath(step string) string { return path.Join(StateDir(step), "log-path") }

// ExitReportLogPath receives the output of the wrapper's exit report.
func ExitReportLogPath(step string) string { return path.Join(StateDir(step), "exit-report.log") }

// ExitReporter is the program the start step's wrapper runs, when the instance has it on
// its PATH, to report the workload's exit at once (a TaskReported of kind exited):
// `sortie-worker exited --step STEP --code CODE`. Without it the monitor's check notices
// the exit at its next round.
const ExitReporter = "sortie-worker"

// StderrPath receives the workload's standard error.
func StderrPath(step string) string { return path.Join(StateDir(step), "stderr") }

// LogPath receives the workload's standard output when the step names no log.
func LogPath(step string) string { return path.Join(StateDir(step), "stdout.log") }

// TailCommand prints the last n lines of the file at p (DefaultTailLines when n < 1).
func TailCommand(p string, n int) string {
	if n < 1 {
		n = DefaultTailLines
	}
	return fmt.Sprintf("tail -n %d %s", n, q(safePath(p)))
}

// SizeCommand prints the size in bytes of the file at p (relative to the login directory),
// 0 when it does not exist yet.
func SizeCommand(p string) string {
	return fmt.Sprintf("wc -c 2> /dev/null < %s || echo 0", q(safePath(p)))
}

// States StatusCommand reports.
const (
	StateNotStarted = "not-started" // no marker: the step never ran
	StateStarting   = "starting"    // marker written, pid not yet
	StateRunning    = "running"     // the workload's process is alive
	StateExited     = "exited"      // the workload ended and its exit code is recorded
	StateDead       = "dead"        // the process is gone without an exit code (killed)
)

// Status is a start step's state as StatusCommand prints it.
type Status struct {
	State    string
	PID      int // StateRunning only
	ExitCode int // StateExited only
}

// StatusCommand prints one line describing the start step's workload: "running PID",
// "exited CODE", "dead", "starting" or "not-started" (see ParseStatus). The exit code is
// checked first, so a reused pid never makes a finished workload look alive.
func StatusCommand(step string) string {
	pid, code := q(PIDPath(step)), q(ExitCodePath(step))
	return fmt.Sprintf("if test -s %[2]s; then echo exited $(cat %[2]s); "+
		"elif test -s %[1]s && kill -0 \"$(cat %[1]s)\" 2> /dev/null; then echo running $(cat %[1]s); "+
		"elif test -s %[2]s; then echo exited $(cat %[2]s); "+
		"elif test -f %[3]s && ! test -s %[1]s; then echo starting; "+
		"elif test -f %[3]s; then echo dead; "+
		"else echo not-started; fi",
		pid, code, q(StartedPath(step)))
}

// ParseStatus parses StatusCommand's output.
func ParseStatus(out string) (Status, error) {
	fields := strings.Fields(out)
	bad := func() (Status, error) { return Status{}, fmt.Errorf("unexpected status output %q", out) }
	if len(fields) == 0 {
		return bad()
	}
	switch st := fields[0]; st {
	case StateNotStarted, StateStarting, StateDead:
		if len(fields) != 1 {
			return bad()
		}
		return Status{State: st}, nil
	case StateRunning, StateExited:
		if len(fields) != 2 {
			return bad()
		}
		n, err := strconv.Atoi(fields[1])
		if err != nil {
			return bad()
		}
		if st == StateRunning {
			return Status{State: st, PID: n}, nil
		}
		return Status{State: st, ExitCode: n}, nil
	default:
		return bad()
	}
}

// FollowStart is the first line FollowCommand prints: "sortie-follow-start N", the number
// of the log's first line it shows (1-based); the log's lines follow.
const FollowStart = "sortie-follow-start"

// FollowedStepsCommand lists the start steps whose workload recorded its log's path (one
// step name per line): what FollowCommand can follow.
func FollowedStepsCommand() string {
	return fmt.Sprintf("for f in %s/*/log-path; do if test -f \"$f\"; then d=${f%%/log-path}; printf '%%s\\n' \"${d#%s/}\"; fi; done",
		StateRoot, StateRoot)
}

// FollowCommand prints FollowStart's line, then the last n lines (every line when n < 1)
// of the start step's log, and, while its workload runs, every line it adds until it
// exits (GNU tail -F --pid). It ends at once when the workload has already ended.
func FollowCommand(step string, n int) string {
	start := "1"
	if n > 0 {
		start = fmt.Sprintf("$(( c >= %d ? c - %d + 1 : 1 ))", n, n)
	}
	return fmt.Sprintf("log=$(cat %[1]s) || exit 1; pid=$(cat %[2]s 2> /dev/null); "+
		"c=$(wc -l < \"$log\" 2> /dev/null || echo 0); s=%[4]s; echo %[5]s \"$s\"; "+
		"if test -n \"$pid\" && ! test -s %[3]s && kill -0 \"$pid\" 2> /dev/null; "+
		"then exec tail -s 0.2 -n +\"$s\" -F --pid=\"$pid\" -- \"$log\" 2> /dev/null; fi; "+
		"exec tail -n +\"$s\" -- \"$log\" 2> /dev/null",
		q(LogRecordPath(step)), q(PIDPath(step)), q(ExitCodePath(step)), start, FollowStart)
}
