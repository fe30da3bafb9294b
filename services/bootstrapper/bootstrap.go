package bootstrapper

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

// MaxRedials is how many times one instance's connection is re-established after it
// dropped mid-recipe, before the instance is reported failed.
const MaxRedials = 3

// runner bootstraps instances.
type runner struct {
	dial        dialFunc
	signer      ssh.Signer
	dialTimeout time.Duration
	stepTimeout time.Duration
	// concurrency bounds the instances bootstrapped at once; 0: the whole fleet.
	concurrency int
	// handshakeTimeout bounds one SSH handshake (remote.DefaultHandshakeTimeout when 0).
	handshakeTimeout time.Duration
	prefix           string
	now              func() time.Time
	metrics          *telemetry.Telemetry // step durations; nil records nothing
}

// newGate is the fleet's handshake gate: as wide as the fleet's concurrency at first,
// narrowing when a handshake takes more than a sixth of its timeout (far from timing out).
func (r *runner) newGate(n int) *remote.Gate {
	ht := r.handshakeTimeout
	if ht == 0 {
		ht = remote.DefaultHandshakeTimeout
	}
	return remote.NewGate(min(n, 8), n, ht/6)
}

// limit is how many of a fleet of n instances are bootstrapped at once.
func (r *runner) limit(n int) int {
	if r.concurrency > 0 && r.concurrency < n {
		return r.concurrency
	}
	return max(n, 1)
}

// bootstrapAll bootstraps every instance of the plan, the whole fleet at once unless the
// concurrency is set lower (handshakes go through one adaptive gate); one instance failing
// never stops the others. Results are in the event's instance order.
func (r *runner) bootstrapAll(ctx context.Context, log *slog.Logger, p fleetPlan, render renderFunc) []events.InstanceResult {
	results := make([]events.InstanceResult, len(p.ev.Instances))
	n := r.limit(len(p.ev.Instances))
	gate := r.newGate(n)
	var g errgroup.Group
	g.SetLimit(n)
	for i, in := range p.ev.Instances {
		g.Go(func() error {
			results[i] = r.bootstrap(ctx, log.With("instance", in.ID), p, in, render, gate)
			return nil
		})
	}
	_ = g.Wait()
	return results
}

// bootstrap runs the recipe on one instance over one connection, one session per step
// (the marker check and the job environment folded into the first, the marker into the
// last), and reports how it went. A connection that drops is re-established and the
// recipe resumes at the step it reached, if that step may run again (or never started).
func (r *runner) bootstrap(ctx context.Context, log *slog.Logger, p fleetPlan, in events.Instance, render renderFunc, gate *remote.Gate) (res events.InstanceResult) {
	start := r.now()
	res = events.InstanceResult{ID: in.ID, SSHEndpoint: in.SSHEndpoint}
	var secrets []string
	redials := 0
	defer func() {
		res.Error = clipText(redact(res.Error, secrets))
		if res.OK {
			log.Info("instance bootstrapped", "steps", len(res.Steps), "redials", redials, "duration", r.now().Sub(start).Round(time.Millisecond))
		} else {
			log.Warn("instance not bootstrapped", "error", res.Error, "steps", len(res.Steps), "redials", redials)
		}
	}()

	addr, hostKey, err := r.target(ctx, p, in.ID)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	res.SSHEndpoint = addr
	log = log.With("ssh_addr", addr)

	steps, secrets, err := render(ctx)
	if err != nil {
		res.Error = "rendering recipe: " + err.Error()
		return res
	}
	book, err := r.bookkeeping(p, in, start)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	steps = recipe.Fold(steps, book)

	var conn session
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for i := 0; i < len(steps); {
		if conn == nil {
			if conn, err = r.connect(ctx, log, p, addr, hostKey, gate); err != nil {
				res.Error = "connecting: " + err.Error()
				return res
			}
		}
		st := steps[i]
		var stdin io.Reader
		if st.Stdin != nil {
			stdin = bytes.NewReader(st.Stdin)
		}
		log.Debug("running step", "step", st.Name, "kind", st.Kind, "command", st.Redacted)
		t := r.now()
		out, err := r.run(ctx, conn, st.Command, stdin)
		sr := events.StepResult{Name: st.Name, ExitCode: out.ExitCode, DurationMS: r.now().Sub(t).Milliseconds()}
		if err != nil && errors.Is(err, remote.ErrConnection) && ctx.Err() == nil {
			again := st.Rerun || errors.Is(err, remote.ErrNotStarted)
			if again && redials < MaxRedials {
				redials++
				log.Warn("connection lost: redialling to resume", "step", st.Name, "error", redact(err.Error(), secrets), "redial", redials)
				conn.Close()
				conn = nil
				continue
			}
			if !again {
				err = fmt.Errorf("%w (run steps are rerun only when the recipe says rerun: %s)", err, opsconfig.RerunSafe)
			}
		}
		if i == 0 && err == nil && recipe.IsDone(book, out.ExitCode, out.Stdout) {
			// Re-bootstrap of an instance that finished before: report it, run nothing.
			log.Info("instance already bootstrapped: running nothing")
			res.OK = true
			res.Steps = []events.StepResult{{Name: AlreadyBootstrapped, DurationMS: sr.DurationMS}}
			return res
		}
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
		if i == len(steps)-1 && len(out.Stderr) > 0 && bytes.Contains(out.Stderr, []byte("writing "+MarkerPath+" failed")) {
			// Every step succeeded; a redelivery would rerun them, which start steps tolerate.
			log.Warn("writing bootstrap marker failed", "stderr", redact(string(out.Stderr), secrets))
		}
		res.Steps = append(res.Steps, sr)
		i++
	}
	res.OK = true
	return res
}

// bookkeeping is what the folded commands do besides the steps on one instance.
func (r *runner) bookkeeping(p fleetPlan, in events.Instance, start time.Time) (recipe.Bookkeeping, error) {
	var nonce [12]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return recipe.Bookkeeping{}, fmt.Errorf("nonce: %w", err)
	}
	return recipe.Bookkeeping{
		MarkerPath:    MarkerPath,
		MarkerContent: fmt.Appendf(nil, "job=%s fleet=%s at=%s\n", p.ev.JobID, p.ev.FleetID, start.UTC().Format(time.RFC3339)),
		EnvPath:       JobEnvPath,
		EnvContent:    JobEnv(p.ev, in.ID, r.prefix),
		Done:          "sortie: already bootstrapped " + hex.EncodeToString(nonce[:]),
	}, nil
}

// connect dials the instance, retrying until it is reachable or the dial timeout passes.
func (r *runner) connect(ctx context.Context, log *slog.Logger, p fleetPlan, addr string, hostKey ssh.PublicKey, gate *remote.Gate) (session, error) {
	dialCtx, cancel := context.WithTimeout(ctx, r.dialTimeout)
	defer cancel()
	return r.dial(dialCtx, remote.DialConfig{
		Addr: addr, User: p.user, Signer: r.signer, HostKey: hostKey,
		HandshakeTimeout: r.handshakeTimeout, Gate: gate,
		OnRetry: func(err error, next time.Duration) {
			log.Debug("instance not reachable yet", "error", err.Error(), "retry_in", next)
		},
	})
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
