package bootstrapper

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/telemetry"
)

// Files the bootstrapper writes on every instance, relative to the login directory.
const (
	// JobEnvPath holds the job's ids as KEY=VALUE lines, for the workload (mode 0600).
	JobEnvPath = recipe.StateRoot + "/job.env"
	// MarkerPath is written after the last step succeeded: an instance that has it is
	// already bootstrapped and runs nothing again.
	MarkerPath = recipe.StateRoot + "/bootstrapped"
)

// AlreadyBootstrapped is the one step reported for an instance that has MarkerPath.
const AlreadyBootstrapped = "already-bootstrapped"

// TailLines is how many lines of a failed step's output are reported.
const TailLines = events.MaxTailLines

// Instance tags the bootstrapper sets.
const (
	StageBootstrapped = "bootstrapped"
)

// session is an SSH connection to one instance.
type session interface {
	Run(ctx context.Context, cmd string, stdin io.Reader) (remote.Result, error)
	Upload(ctx context.Context, remotePath string, mode os.FileMode, r io.Reader) error
	Close() error
}

var _ session = (*remote.Client)(nil)

// dialFunc connects to an instance: remote.Dial, or a fake in tests.
type dialFunc func(ctx context.Context, cfg remote.DialConfig) (session, error)

func dialRemote(ctx context.Context, cfg remote.DialConfig) (session, error) {
	c, err := remote.Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// fleetPlan is a FleetLaunched resolved against the ops config, before any connection.
type fleetPlan struct {
	ev      events.FleetLaunched
	recipe  opsconfig.Recipe
	user    string
	hostKey ssh.PublicKey // the fleet's derived key; nil when instanceKeys
	// instanceKeys: the template's instances make their own host keys, read from each
	// one's console. publicIP: the template connects to public IPs.
	instanceKeys, publicIP bool
	// target says where each instance is and which key it must present, as EC2 (not the
	// event) says: set once the instances are verified (hostResolver.targets).
	target targetFunc
}

// planFleet resolves the recipe, the login user and the host keys of a fleet. Every
// error it returns is permanent: the event names something that does not exist or
// carries a key that does not parse.
func planFleet(ev events.FleetLaunched, ops *opsconfig.Config) (fleetPlan, error) {
	p := fleetPlan{ev: ev, user: opsconfig.DefaultUser}
	var errs []error
	r, err := ops.Recipe(ev.Recipe)
	if err != nil {
		errs = append(errs, err)
	}
	p.recipe = r
	if ev.Template != "" {
		t, err := ops.Template(ev.Template)
		if err != nil {
			errs = append(errs, err)
		} else {
			if t.User != "" {
				p.user = t.User
			}
			p.instanceKeys, p.publicIP = t.InstanceHostKeys(), t.PublicAddress()
		}
	}
	if p.instanceKeys { // the template, not the event, says where keys come from
		if err := errors.Join(errs...); err != nil {
			return fleetPlan{}, bus.Permanent(fmt.Errorf("fleet %s: %w", ev.FleetID, err))
		}
		return p, nil
	}
	key, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(ev.HostKey))
	switch {
	case ev.HostKey == "":
		errs = append(errs, fmt.Errorf("host_key: required: template %q's host keys are derived", ev.Template))
	case err != nil:
		errs = append(errs, fmt.Errorf("host_key: %w", err))
	case len(bytes.TrimSpace(rest)) > 0:
		errs = append(errs, errors.New("host_key: more than one key"))
	default:
		p.hostKey = key
	}
	if err := errors.Join(errs...); err != nil {
		return fleetPlan{}, bus.Permanent(fmt.Errorf("fleet %s: %w", ev.FleetID, err))
	}
	return p, nil
}

// JobEnv renders .sortie/job.env for one instance: KEY=VALUE lines, values literal (every
// value is printable ASCII without line breaks, as events.Validate guarantees; the file is
// parsed, not sourced by a shell).
func JobEnv(ev events.FleetLaunched, instanceID, prefix string) []byte {
	var b bytes.Buffer
	for _, kv := range [][2]string{
		{"SORTIE_JOB_ID", ev.JobID},
		{"SORTIE_CORRELATION_ID", ev.CorrelationID},
		{"SORTIE_FLEET_ID", ev.FleetID},
		{"SORTIE_INSTANCE_ID", instanceID},
		{"SORTIE_PREFIX", prefix},
	} {
		fmt.Fprintf(&b, "%s=%s\n", kv[0], kv[1])
	}
	return b.Bytes()
}

// renderFunc renders the recipe's steps for one instance, presigning fetch URLs afresh,
// and returns the secrets (presigned URLs) that must never reach a log or an event.
type renderFunc func(ctx context.Context) (steps []recipe.Step, secrets []string, err error)

// runner bootstraps instances.
type runner struct {
	dial        dialFunc
	signer      ssh.Signer
	dialTimeout time.Duration
	stepTimeout time.Duration
	concurrency int
	prefix      string
	now         func() time.Time
	metrics     *telemetry.Telemetry // step durations; nil records nothing
}

// bootstrapAll bootstraps every instance of the plan, at most r.concurrency at once; one
// instance failing never stops the others. Results are in the event's instance order.
func (r *runner) bootstrapAll(ctx context.Context, log *slog.Logger, p fleetPlan, render renderFunc) []events.InstanceResult {
	results := make([]events.InstanceResult, len(p.ev.Instances))
	var g errgroup.Group
	g.SetLimit(r.concurrency)
	for i, in := range p.ev.Instances {
		g.Go(func() error {
			results[i] = r.bootstrap(ctx, log.With("instance", in.ID), p, in, render)
			return nil
		})
	}
	_ = g.Wait()
	return results
}

// bootstrap runs the recipe on one instance over one connection and reports how it went.
func (r *runner) bootstrap(ctx context.Context, log *slog.Logger, p fleetPlan, in events.Instance, render renderFunc) (res events.InstanceResult) {
	start := r.now()
	res = events.InstanceResult{ID: in.ID, SSHEndpoint: in.SSHEndpoint}
	var secrets []string
	defer func() {
		res.Error = clipText(redact(res.Error, secrets))
		if res.OK {
			log.Info("instance bootstrapped", "steps", len(res.Steps), "duration", r.now().Sub(start).Round(time.Millisecond))
		} else {
			log.Warn("instance not bootstrapped", "error", res.Error, "steps", len(res.Steps))
		}
	}()

	addr, hostKey, err := r.target(ctx, p, in.ID)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	res.SSHEndpoint = addr
	log = log.With("ssh_addr", addr)
	dialCtx, cancel := context.WithTimeout(ctx, r.dialTimeout)
	defer cancel()
	conn, err := r.dial(dialCtx, remote.DialConfig{
		Addr: addr, User: p.user, Signer: r.signer, HostKey: hostKey,
		OnRetry: func(err error, next time.Duration) {
			log.Debug("instance not reachable yet", "error", err.Error(), "retry_in", next)
		},
	})
	if err != nil {
		res.Error = "connecting: " + err.Error()
		return res
	}
	defer conn.Close()

	// Re-bootstrap of an instance that finished before: report it, run nothing.
	t0 := r.now()
	check, err := r.run(ctx, conn, "test -f "+MarkerPath, nil)
	if err != nil {
		res.Error = "checking " + MarkerPath + ": " + err.Error()
		return res
	}
	if check.ExitCode == 0 {
		log.Info("instance already bootstrapped: running nothing")
		res.OK = true
		res.Steps = []events.StepResult{{Name: AlreadyBootstrapped, DurationMS: r.now().Sub(t0).Milliseconds()}}
		return res
	}

	steps, secrets, err := render(ctx)
	if err != nil {
		res.Error = "rendering recipe: " + err.Error()
		return res
	}
	upCtx, cancelUp := context.WithTimeout(ctx, r.stepTimeout)
	err = conn.Upload(upCtx, JobEnvPath, 0o600, bytes.NewReader(JobEnv(p.ev, in.ID, r.prefix)))
	cancelUp()
	if err != nil {
		res.Error = "uploading " + JobEnvPath + ": " + err.Error()
		return res
	}

	for _, st := range steps {
		var stdin io.Reader
		if st.Stdin != nil {
			stdin = bytes.NewReader(st.Stdin)
		}
		log.Debug("running step", "step", st.Name, "kind", st.Kind, "command", st.Redacted)
		t := r.now()
		out, err := r.run(ctx, conn, st.Command, stdin)
		sr := events.StepResult{Name: st.Name, ExitCode: out.ExitCode, DurationMS: r.now().Sub(t).Milliseconds()}
		stepErr := err
		if stepErr == nil && out.ExitCode != 0 {
			stepErr = fmt.Errorf("exit status %d", out.ExitCode)
		}
		r.metrics.BootstrapStep(st.Kind, r.now().Sub(t), stepErr)
		if err != nil || out.ExitCode != 0 {
			if err != nil {
				sr.ExitCode = -1
			}
			sr.OutputTail = outputTail(out, TailLines, secrets)
			res.Steps = append(res.Steps, sr)
			if err != nil {
				res.Error = fmt.Sprintf("step %s: %v", st.Name, err)
			} else {
				res.Error = fmt.Sprintf("step %s exited with status %d", st.Name, out.ExitCode)
			}
			log.Warn("step failed", "step", st.Name, "exit_code", sr.ExitCode, "command", st.Redacted)
			return res
		}
		res.Steps = append(res.Steps, sr)
	}

	marker := fmt.Sprintf("job=%s fleet=%s at=%s\n", p.ev.JobID, p.ev.FleetID, r.now().UTC().Format(time.RFC3339))
	mkCtx, cancelMk := context.WithTimeout(ctx, r.stepTimeout)
	err = conn.Upload(mkCtx, MarkerPath, 0o600, strings.NewReader(marker))
	cancelMk()
	if err != nil {
		// Every step succeeded; a redelivery would rerun them, which start steps tolerate.
		log.Warn("writing bootstrap marker", "error", redact(err.Error(), secrets))
	}
	res.OK = true
	return res
}

// target is where to connect to instance id and which host key to pin, from EC2; an
// instance the plan has not verified is never contacted.
func (r *runner) target(ctx context.Context, p fleetPlan, id string) (string, ssh.PublicKey, error) {
	if p.target == nil {
		return "", nil, errNoTarget
	}
	return p.target(ctx, id)
}

// run runs one command, bounded by the step timeout.
func (r *runner) run(ctx context.Context, conn session, cmd string, stdin io.Reader) (remote.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, r.stepTimeout)
	defer cancel()
	return conn.Run(ctx, cmd, stdin)
}

// outputTail is the last n lines of a step's output, stdout then stderr (an SSH session
// keeps them apart, and the exact command is run unchanged), made safe for an event:
// secrets redacted, each line valid UTF-8 without NUL and at most MaxTextBytes.
func outputTail(res remote.Result, n int, secrets []string) []string {
	combined := bytes.TrimSuffix(res.Stdout, []byte("\n"))
	if len(combined) > 0 && len(res.Stderr) > 0 {
		combined = append(combined, '\n')
	}
	combined = append(combined, res.Stderr...)
	lines := remote.Tail(combined, n)
	for i, l := range lines {
		lines[i] = clipText(redact(l, secrets))
	}
	return lines
}

// presignedURL matches any presigned S3 URL, in case one reaches output in a form that
// differs from the one handed out (re-encoded, split).
var presignedURL = regexp.MustCompile(`https?://[^\s'"]*X-Amz-(Signature|Credential)=[^\s'"]*`)

// redact replaces secrets, and anything that looks like a presigned URL, in s.
func redact(s string, secrets []string) string {
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "<presigned URL>")
		}
	}
	return presignedURL.ReplaceAllString(s, "<presigned URL>")
}

// clipText makes s valid event text: valid UTF-8, no NUL, at most MaxTextBytes (cut at a
// rune boundary).
func clipText(s string) string {
	return clip(s, events.MaxTextBytes)
}

func clip(s string, max int) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "")
	if len(s) <= max {
		return s
	}
	const ellipsis = "…"
	cut := max - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

// fitLevels are successive reductions of output tails (lines kept, bytes per line) that
// bring a large fleet's event under events.MaxBodyBytes.
var fitLevels = []struct{ lines, lineBytes int }{
	{TailLines, events.MaxTextBytes},
	{TailLines, 512},
	{20, 200},
	{5, 120},
	{0, 0},
}

// fit returns ev with its output tails shortened as little as needed for the encoded
// event to fit in one message.
func fit(ev events.FleetBootstrapped) events.FleetBootstrapped {
	for _, lv := range fitLevels {
		out := ev
		out.Instances = make([]events.InstanceResult, len(ev.Instances))
		for i, in := range ev.Instances {
			in.Steps = append([]events.StepResult(nil), in.Steps...)
			for j, st := range in.Steps {
				tail := st.OutputTail
				if len(tail) > lv.lines {
					tail = tail[len(tail)-lv.lines:]
				}
				var short []string
				for _, l := range tail {
					short = append(short, clip(l, lv.lineBytes))
				}
				in.Steps[j].OutputTail = short
			}
			if lv.lines < TailLines {
				in.Error = clip(in.Error, 512)
			}
			out.Instances[i] = in
		}
		if b, err := json.Marshal(out); err == nil && len(b) <= events.MaxBodyBytes {
			return out
		}
	}
	return ev // still too large: Encode says so
}
