package recipe

import (
	"fmt"
	"path"
)

// Bookkeeping is what a bootstrap does on an instance besides the recipe's steps: skip an
// instance that finished before, hand the workload its job environment, mark the instance
// done. Fold puts it into the steps' own commands, so a bootstrap opens one SSH session
// per step and no more.
type Bookkeeping struct {
	// MarkerPath exists once every step succeeded; MarkerContent is written to it.
	MarkerPath    string
	MarkerContent []byte
	// EnvPath receives EnvContent (mode 0600) before the first step.
	EnvPath    string
	EnvContent []byte
	// Done is printed, alone, by the first command when MarkerPath exists, in which case
	// it runs nothing else (see IsDone). Make it unguessable (a random nonce), so no step's
	// own output can pass for it.
	Done string
}

// Fold returns steps with b folded in: the first command checks the marker (printing
// b.Done and exiting 0 when it exists) and writes the job environment before its step;
// the last command writes the marker once its step succeeded, keeping the step's exit
// status. Every other field of the steps is unchanged. Both additions are idempotent, so
// a folded step may be rerun as its step may. They cost the instance as few processes as
// they can (a bootstrapper on a small task shares its CPU with hundreds of these shells):
// one subshell for the environment's umask, mkdir only where the directory is missing.
func Fold(steps []Step, b Bookkeeping) []Step {
	out := append([]Step(nil), steps...)
	if len(out) == 0 {
		return out
	}
	first, last := &out[0], &out[len(out)-1]
	// The step runs in the shell itself, in braces (a newline ends it, whatever its last
	// word); the marker is written after it with the shell's umask set, as the shell exits
	// right after.
	suffix := fmt.Sprintf("\n}; rc=$?; if test $rc -eq 0; then umask 077; %s || echo %s >&2; fi; exit $rc",
		writeFile(b.MarkerPath, b.MarkerContent), q("sortie: writing "+b.MarkerPath+" failed"))
	last.Command = "{ " + last.Command + suffix
	last.Redacted = "{ " + last.Redacted + suffix
	prefix := fmt.Sprintf("if test -f %s; then echo %s; exit 0; fi; (umask 077; %s) || exit 1; ",
		q(b.MarkerPath), q(b.Done), writeFile(b.EnvPath, b.EnvContent))
	first.Command, first.Redacted = prefix+first.Command, prefix+first.Redacted
	return out
}

// IsDone reports whether the output of a folded first command says the instance had
// finished before (and nothing ran).
func IsDone(b Bookkeeping, exitCode int, stdout []byte) bool {
	return exitCode == 0 && string(stdout) == b.Done+"\n"
}

// writeFile is a command writing content to p, creating its directory if missing.
func writeFile(p string, content []byte) string {
	p = safePath(p)
	d := q(path.Dir(p))
	return fmt.Sprintf("{ test -d %s || mkdir -p %s; } && printf %%s %s > %s", d, d, q(string(content)), q(p))
}
