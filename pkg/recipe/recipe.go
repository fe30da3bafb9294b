// Package recipe renders an ops recipe and a job's parameters into the exact shell commands run over SSH.
package recipe

import (
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"al.essio.dev/pkg/shellescape"

	"github.com/sortie-fleet/sortie/pkg/opsconfig"
)

// PresignExpiry is how long the presigned URL of a fetch step must stay valid.
const PresignExpiry = 300 * time.Second

// Fetchers a RenderEnv may name.
const (
	FetcherCurl = "curl"
	FetcherWget = "wget"
)

// Step is one rendered step.
type Step struct {
	Name string
	Kind string // opsconfig.KindFetch, KindUpload, KindRun or KindStart
	// Command is the exact string to run with `sh -c` (the SSH exec request), from the login
	// directory. Every substituted value and every path in it is shell-quoted.
	Command string
	// Stdin is fed to Command: the content of an upload step, nil otherwise.
	Stdin []byte
	// Redacted is Command with secrets (a fetch step's presigned URL) replaced, for logs and events.
	Redacted string
	// Log and Stderr are where a start step's workload writes stdout and stderr; empty otherwise.
	Log, Stderr string
	// Rerun: the step may run again after a connection dropped while it ran. Uploads and
	// fetches overwrite, a start step has its marker; a run step says so in the recipe.
	Rerun bool
}

// RenderEnv is what rendering needs from the caller.
type RenderEnv struct {
	// Presign returns a GET URL for s3://bucket/key valid for PresignExpiry.
	// Needed only by recipes with fetch steps.
	Presign func(bucket, key string) (string, error)
	// Fetcher is the download tool on the instance: FetcherCurl (the default when empty) or FetcherWget.
	Fetcher string
	// SecretsBucket is the stack's secrets bucket (bus.Topology.SecretsBucketName): a fetch
	// from it is refused before Presign is called, whatever the recipe lists.
	SecretsBucket string
}

// ErrForbidden is wrapped by every error about a step that would reach outside what a
// recipe may touch: a path or key leaving the login directory or bucket, a fetch from a
// bucket the recipe does not list or from the stack's secrets bucket. It is permanent.
var ErrForbidden = errors.New("forbidden by the recipe's bounds")

// CheckFetch reports why a recipe may not fetch s3://bucket/key, or nil: the bucket must
// be one of the recipe's fetch_buckets and not the stack's secrets bucket, and the key a
// relative path without a ".." element. Render checks it before presigning; the
// bootstrapper checks it again in its presigner.
func CheckFetch(r opsconfig.Recipe, secretsBucket, bucket, key string) error {
	switch {
	case secretsBucket != "" && bucket == secretsBucket:
		return fmt.Errorf("fetch from s3://%s: the stack's secrets bucket: %w", bucket, ErrForbidden)
	case !r.MayFetchFrom(bucket):
		return fmt.Errorf("fetch from s3://%s: not one of the recipe's fetch_buckets %v: %w", clip(bucket), r.FetchBuckets, ErrForbidden)
	}
	if err := opsconfig.CheckRelPath(key); err != nil {
		return fmt.Errorf("fetch key %q: %v: %w", clip(key), err, ErrForbidden)
	}
	return nil
}

// ErrInvalidParam is wrapped by every *ParamError: the job's parameters are permanently bad.
var ErrInvalidParam = errors.New("invalid recipe parameter")

// ParamError is one problem with one job parameter.
type ParamError struct {
	Param  string
	Reason string
}

func (e *ParamError) Error() string { return fmt.Sprintf("parameter %q: %s", e.Param, e.Reason) }

// Unwrap makes errors.Is(err, ErrInvalidParam) hold.
func (e *ParamError) Unwrap() error { return ErrInvalidParam }

// ResolveParams checks a job's parameters against the recipe and returns the value of every
// declared parameter: the job's, else the default, else "". It reports every problem at once
// (errors.Join of *ParamError): an unknown parameter, a missing required one, a value with
// NUL or a line break, longer than max_len or not matching its anchored pattern.
func ResolveParams(r opsconfig.Recipe, params map[string]string) (map[string]string, error) {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, &ParamError{Param: name, Reason: fmt.Sprintf(format, args...)})
	}
	for _, name := range slices.Sorted(maps.Keys(params)) {
		if _, ok := r.Params[name]; !ok {
			bad(name, "unknown parameter (the recipe takes %s)", declared(r))
		}
	}
	values := make(map[string]string, len(r.Params))
	for _, name := range slices.Sorted(maps.Keys(r.Params)) {
		p := r.Params[name]
		v, given := params[name]
		if !given {
			if p.Required {
				bad(name, "required")
				continue
			}
			if v = p.Default; v == "" {
				values[name] = ""
				continue
			}
		}
		re, err := p.Regexp()
		if err != nil {
			bad(name, "recipe pattern does not compile: %v", err)
			continue
		}
		switch {
		case strings.ContainsAny(v, "\x00\n\r"):
			bad(name, "must not contain NUL or line breaks")
		case len(v) > p.Limit():
			bad(name, "longer than %d bytes (%d)", p.Limit(), len(v))
		case !re.MatchString(v):
			bad(name, "value %q does not match %s", clip(v), p.Pattern)
		default:
			values[name] = v
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return values, nil
}

// clip shortens a rejected value for an error message.
func clip(v string) string {
	const n = 64
	if len(v) <= n {
		return v
	}
	return v[:n] + "…"
}

func declared(r opsconfig.Recipe) string {
	if len(r.Params) == 0 {
		return "no parameters"
	}
	return strings.Join(slices.Sorted(maps.Keys(r.Params)), ", ")
}

// Check resolves params (see ResolveParams) and renders every step without presigning,
// reporting the first step that would reach outside the recipe's bounds (ErrForbidden):
// after parameter expansion every path and key must pass opsconfig.CheckRelPath and every
// fetch CheckFetch. The planner runs it on every job, so such a job is dead-lettered
// before anything downstream acts on it.
func Check(r opsconfig.Recipe, params map[string]string, secretsBucket string) error {
	values, err := ResolveParams(r, params)
	if err != nil {
		return err
	}
	for i, s := range r.Steps {
		if _, err := renderStep(s, r, values, RenderEnv{SecretsBucket: secretsBucket}, true); err != nil {
			return fmt.Errorf("rendering step %d %q: %w", i, s.Name, err)
		}
	}
	return nil
}

// Render checks params (see ResolveParams) and renders every step of r, in order. Every
// step is checked (see Check) before the first URL is presigned.
func Render(r opsconfig.Recipe, params map[string]string, env RenderEnv) ([]Step, error) {
	if err := Check(r, params, env.SecretsBucket); err != nil {
		return nil, err
	}
	values, err := ResolveParams(r, params)
	if err != nil {
		return nil, err
	}
	steps := make([]Step, 0, len(r.Steps))
	for i, s := range r.Steps {
		st, err := renderStep(s, r, values, env, false)
		if err != nil {
			return nil, fmt.Errorf("rendering step %d %q: %w", i, s.Name, err)
		}
		steps = append(steps, st)
	}
	return steps, nil
}

// Workload is where a start step's detached workload keeps its state and output.
type Workload struct {
	Step        string // the step name: StatusCommand(Step) reports on it
	Log, Stderr string
	StateDir    string
	// StallWindow is how long the workload's progress signal (Signal) may stand still while
	// it runs before the job fails; 0: no stall detection.
	StallWindow time.Duration
	// Signal is the step's progress signal: opsconfig.ProgressLog or ProgressTasks.
	Signal string
}

// StallWindow is a start step's stall window: how long its progress signal may stand still
// (0: the step names none).
func StallWindow(s opsconfig.Step) time.Duration {
	if s.Start == nil || s.Start.Progress == nil {
		return 0
	}
	return s.Start.Progress.StallWindow.Std()
}

// Workloads returns the recipe's start steps with their paths for the given job parameters,
// without rendering the other steps (so without presigning): what the monitor polls and
// the reaper archives.
func Workloads(r opsconfig.Recipe, params map[string]string) ([]Workload, error) {
	values, err := ResolveParams(r, params)
	if err != nil {
		return nil, err
	}
	var out []Workload
	for i, s := range r.Steps {
		if s.Kind() != opsconfig.KindStart {
			continue
		}
		st, err := renderStep(s, r, values, RenderEnv{}, false)
		if err != nil {
			return nil, fmt.Errorf("rendering step %d %q: %w", i, s.Name, err)
		}
		w := Workload{Step: s.Name, Log: st.Log, Stderr: st.Stderr, StateDir: StateDir(s.Name), StallWindow: StallWindow(s)}
		if w.StallWindow > 0 {
			w.Signal = s.Start.Progress.Signal
		}
		out = append(out, w)
	}
	return out, nil
}

// renderStep renders one step. With checkOnly it checks a fetch step without presigning
// (the first pass of Render).
func renderStep(s opsconfig.Step, r opsconfig.Recipe, values map[string]string, env RenderEnv, checkOnly bool) (Step, error) {
	out := Step{Name: s.Name, Kind: s.Kind(), Rerun: s.Run == nil || s.Run.RerunSafe()}
	if out.Kind == "" {
		return Step{}, errors.New("must have exactly one of fetch, upload, run, start")
	}
	if s.Name == "" || strings.ContainsAny(s.Name, "/\x00") || s.Name == "." || s.Name == ".." {
		return Step{}, fmt.Errorf("invalid step name %q", s.Name)
	}
	expand := func(v string) (string, error) { return opsconfig.Expand(v, values) }
	// expandPath returns the one string a path is used as, everywhere: checked after
	// expansion, cleaned, and kept from reading as an option.
	expandPath := func(v string) (string, error) {
		p, err := expand(v)
		if err != nil {
			return "", err
		}
		if err := opsconfig.CheckRelPath(p); err != nil {
			return "", fmt.Errorf("path %q: %v: %w", clip(p), err, ErrForbidden)
		}
		c := path.Clean(p)
		if c == "." {
			return "", fmt.Errorf("path %q: names the login directory itself, not a file: %w", clip(p), ErrForbidden)
		}
		return safePath(c), nil
	}
	expandArgv := func(argv []string) (string, error) {
		if len(argv) == 0 {
			return "", errors.New("empty argv")
		}
		words := make([]string, len(argv))
		for i, a := range argv {
			w, err := expand(a)
			if err != nil {
				return "", err
			}
			words[i] = w
		}
		return shellescape.QuoteCommand(words), nil
	}

	switch out.Kind {
	case opsconfig.KindUpload:
		u := s.Upload
		p, err := expandPath(u.Path)
		if err != nil {
			return Step{}, err
		}
		content, err := expand(u.Content)
		if err != nil {
			return Step{}, err
		}
		qp := q(p)
		out.Command = fmt.Sprintf("umask 077; mkdir -p %s && cat > %s && chmod %s %s", q(path.Dir(p)), qp, u.Mode.OrDefault(), qp)
		out.Stdin = []byte(content)

	case opsconfig.KindFetch:
		f := s.Fetch
		bucket, err := expand(f.Bucket)
		if err != nil {
			return Step{}, err
		}
		key, err := expand(f.Key)
		if err != nil {
			return Step{}, err
		}
		p, err := expandPath(f.Path)
		if err != nil {
			return Step{}, err
		}
		if err := CheckFetch(r, env.SecretsBucket, bucket, key); err != nil {
			return Step{}, err
		}
		if checkOnly {
			return out, nil
		}
		if env.Presign == nil {
			return Step{}, errors.New("fetch step needs RenderEnv.Presign")
		}
		url, err := env.Presign(bucket, key)
		if err != nil {
			return Step{}, fmt.Errorf("presigning s3://%s/%s: %w", bucket, key, err)
		}
		if !strings.HasPrefix(url, "https://") && !strings.HasPrefix(url, "http://") {
			return Step{}, fmt.Errorf("presigned URL for s3://%s/%s is not http(s)", bucket, key)
		}
		var download string
		switch env.Fetcher {
		case "", FetcherCurl:
			download = "curl -fsS --retry 3 -o %s %s"
		case FetcherWget:
			download = "wget -q -O %s %s"
		default:
			return Step{}, fmt.Errorf("unknown fetcher %q (want %s or %s)", env.Fetcher, FetcherCurl, FetcherWget)
		}
		qp := q(p)
		format := "umask 077; mkdir -p %s && " + download + " && chmod %s %s"
		out.Command = fmt.Sprintf(format, q(path.Dir(p)), qp, q(url), f.Mode.OrDefault(), qp)
		out.Redacted = fmt.Sprintf(format, q(path.Dir(p)), qp, "'<presigned URL>'", f.Mode.OrDefault(), qp)

	case opsconfig.KindRun:
		cmd, err := expandArgv(s.Run.Argv)
		if err != nil {
			return Step{}, err
		}
		out.Command = cmd

	case opsconfig.KindStart:
		st := s.Start
		cmd, err := expandArgv(st.Argv)
		if err != nil {
			return Step{}, err
		}
		log := LogPath(s.Name)
		if st.Log != "" {
			if log, err = expandPath(st.Log); err != nil {
				return Step{}, err
			}
		}
		out.Command = startCommand(s.Name, cmd, log)
		out.Log, out.Stderr = log, StderrPath(s.Name)
	}
	if out.Redacted == "" {
		out.Redacted = out.Command
	}
	return out, nil
}

// startCommand starts cmd detached under nohup, once: the first run creates the marker
// file with O_EXCL (set -C) and later runs (a re-bootstrap, a duplicate message) only
// print that the step already started. It records the log's path for `sortie logs
// --follow`. When the workload ends its wrapper records the exit code and, where the
// instance has ExitReporter, reports the exit at once.
func startCommand(step, cmd, log string) string {
	exitTmp := ExitCodePath(step) + ".tmp"
	report := shellescape.QuoteCommand([]string{ExitReporter, "exited", "--step", step, "--code"})
	script := fmt.Sprintf("%s; echo $? > %s && mv -f %s %s; "+
		"if command -v %s > /dev/null 2>&1; then %s \"$(cat %s)\" > %s 2>&1; fi",
		cmd, q(exitTmp), q(exitTmp), q(ExitCodePath(step)),
		ExitReporter, report, q(ExitCodePath(step)), q(ExitReportLogPath(step)))
	dirs := q(StateDir(step))
	if d := path.Dir(log); d != StateDir(step) {
		dirs += " " + q(d)
	}
	return fmt.Sprintf("mkdir -p %s && if (set -C; : > %s) 2> /dev/null; "+
		"then printf '%%s\\n' %s > %s; nohup sh -c %s < /dev/null > %s 2> %s & echo $! > %s; "+
		"else echo %s; fi",
		dirs, q(StartedPath(step)),
		q(log), q(LogRecordPath(step)),
		q(script), q(log), q(StderrPath(step)), q(PIDPath(step)),
		q("sortie: step "+step+" already started"))
}

// q quotes one word for sh.
func q(s string) string { return shellescape.Quote(s) }

// safePath keeps a relative path from being read as an option.
func safePath(p string) string {
	if strings.HasPrefix(p, "-") {
		return "./" + p
	}
	return p
}
