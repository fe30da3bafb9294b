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
