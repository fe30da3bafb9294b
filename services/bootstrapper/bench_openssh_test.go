package bootstrapper

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/opensshd"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/remote"
)

// The benchmark's settings (task bench:bootstrap N=100 ROUNDS=3).
const (
	envBenchHosts  = "SORTIE_BENCH_HOSTS"
	envBenchRounds = "SORTIE_BENCH_ROUNDS"
)

// benchRecipe is the 5-step recipe of the benchmark: run, upload, detached start, stat,
// read back.
const benchRecipe = `
    steps:
      - name: prepare
        run: {argv: [mkdir, -p, work], rerun: safe}
      - name: input
        upload: {path: work/input.txt, content: "sortie benchmark input\n"}
      - name: worker
        start: {argv: [sh, -c, 'echo started']}
      - name: stat
        run: {argv: [stat, -c, '%s', work/input.txt], rerun: safe}
      - name: read
        run: {argv: [cat, work/input.txt], rerun: safe}
`

// TestBootstrapBenchOpenSSH starts N Debian sshd hosts on loopback (one port each, one
// fleet host key, each its own directory) and bootstraps them alternately with the
// bootstrapper's own code path (bootstrapAll, defaults) and a minimal raw x/crypto/ssh
// client running the same steps, printing wall time, per-host p50/p99 and failures of
// each and their ratio. It asserts no host is lost (not a timing): CI runs it at a small
// N, `task bench:bootstrap N=100` at scale.
func TestBootstrapBenchOpenSSH(t *testing.T) {
	if err := opensshd.Available(""); err != nil {
		cloudtest.MissingTool(t, "the OpenSSH bootstrap benchmark needs sshd: "+err.Error())
	}
	n := envInt(t, envBenchHosts, 4)
	rounds := envInt(t, envBenchRounds, 1)

	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	hostKey, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	login := cloudtest.NewSigner(t)
	root := t.TempDir()
	hosts := make([]*opensshd.Server, n)
	dirs := make([]string, n)
	var g sync.WaitGroup
	var startErr error
	var mu sync.Mutex
	sem := make(chan struct{}, 8)
	for i := range n {
		dirs[i] = filepath.Join(root, fmt.Sprintf("host-%d", i), "home")
		g.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			s, err := opensshd.Start(opensshd.Config{
				HostKeyPEM: pem.EncodeToMemory(block), AuthorizedKeys: []ssh.PublicKey{login.PublicKey()},
				Dir: dirs[i], StateDir: filepath.Join(root, fmt.Sprintf("host-%d", i), "sshd"),
			})
			mu.Lock()
			defer mu.Unlock()
			if err != nil && startErr == nil {
				startErr = err
			}
			hosts[i] = s
		})
	}
	g.Wait()
	t.Cleanup(func() {
		for _, h := range hosts {
			if h != nil {
				_ = h.Close()
			}
		}
	})
	if startErr != nil {
		t.Fatalf("starting sshd hosts: %v", startErr)
	}

	ops, err := opsconfig.Parse([]byte(benchOps + benchRecipe))
	if err != nil {
		t.Fatal(err)
	}
	steps, err := recipe.Render(ops.Recipes["bench"], nil, recipe.RenderEnv{})
	if err != nil {
		t.Fatal(err)
	}
	ev := events.FleetLaunched{
		Header:  events.NewHeader("job-bench", "corr-bench", time.Now()),
		FleetID: "job-bench", PlanRevision: 1, Template: "bench", Recipe: "bench",
		DeadlineAt: time.Now().Add(time.Hour), KeyName: "bench",
		HostKey: string(ssh.MarshalAuthorizedKey(hostKey)),
	}
	for i, h := range hosts {
		ev.Instances = append(ev.Instances, events.Instance{ID: fmt.Sprintf("i-%017x", i), InstanceType: "t3.micro", SSHEndpoint: h.Addr(), LaunchedAt: ev.Time})
	}
	p, err := planFleet(ev, ops)
	if err != nil {
		t.Fatal(err)
	}
	p.user = hosts[0].User()
	p.target = eventTargets(p)

	reset := func() {
		for _, d := range dirs {
			if err := os.RemoveAll(d); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(d, 0o700); err != nil {
				t.Fatal(err)
			}
		}
	}
	var raw, sortie []benchRun
	runRaw := func() { reset(); raw = append(raw, rawClient(p, login, hostKey, steps)) }
	runSortie := func() { reset(); sortie = append(sortie, sortieClient(p, login, steps)) }
	for r := range rounds {
		// Alternate which client goes first, so neither always meets the warmer machine.
		if r%2 == 0 {
			runRaw()
			runSortie()
		} else {
			runSortie()
			runRaw()
		}
		t.Logf("round %d: raw %s, sortie %s (ratio %.2f)", r+1, raw[r], sortie[r], sortie[r].wall.Seconds()/raw[r].wall.Seconds())
	}
	rawSum, sortieSum := summarize(raw), summarize(sortie)
	ratio := sortieSum.wall.Seconds() / rawSum.wall.Seconds()
	fmt.Fprintf(os.Stdout, "\nbootstrap benchmark: %d OpenSSH hosts, %d rounds, 5-step recipe (median of rounds; per-host times pooled)\n", n, rounds)
	fmt.Fprintf(os.Stdout, "%-24s %10s %10s %10s %9s\n", "client", "wall", "p50", "p99", "failures")
	fmt.Fprintf(os.Stdout, "%-24s %10s %10s %10s %9d\n", "raw x/crypto/ssh", rawSum.wall.Round(time.Millisecond), rawSum.p50.Round(time.Millisecond), rawSum.p99.Round(time.Millisecond), rawSum.failures)
	fmt.Fprintf(os.Stdout, "%-24s %10s %10s %10s %9d\n", "sortie bootstrapper", sortieSum.wall.Round(time.Millisecond), sortieSum.p50.Round(time.Millisecond), sortieSum.p99.Round(time.Millisecond), sortieSum.failures)
	fmt.Fprintf(os.Stdout, "ratio sortie/raw (wall): %.2f\n", ratio)

	for _, r := range slices.Concat(raw, sortie) {
		for _, e := range r.errors {
			t.Errorf("%s: %s", r.client, e)
		}
	}
}

const benchOps = `
templates:
  bench:
    ami: ami-0123456789abcdef0
    instance_types: [t3.micro]
    subnets: [subnet-0123456789abcdef0]
    security_groups: [sg-0123456789abcdef0]
    instance_profile: sortie-worker
    key_name: bench
    min_instances: 1
    max_instances: 1000
    ttl: 30m
profiles: {}
recipes:
  bench:`

// benchRun is one client's pass over the fleet.
type benchRun struct {
	client   string
	wall     time.Duration
	perHost  []time.Duration // from the fleet's start to the host's last step
	failures int
	errors   []string
}

func (r benchRun) String() string {
	s := summarize([]benchRun{r})
	return fmt.Sprintf("%s p50 %s p99 %s failures %d", r.wall.Round(time.Millisecond), s.p50.Round(time.Millisecond), s.p99.Round(time.Millisecond), r.failures)
}

type benchSummary struct {
	wall, p50, p99 time.Duration
	failures       int
}

func summarize(runs []benchRun) benchSummary {
	var walls, per []time.Duration
	var s benchSummary
	for _, r := range runs {
		walls = append(walls, r.wall)
		per = append(per, r.perHost...)
		s.failures += r.failures
	}
	s.wall = quantile(walls, 0.5)
	s.p50, s.p99 = quantile(per, 0.5), quantile(per, 0.99)
	return s
}

func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	d = slices.Clone(d)
	slices.Sort(d)
	return d[min(len(d)-1, int(q*float64(len(d))))]
}

// sortieClient bootstraps the fleet with the bootstrapper's code path and its defaults.
func sortieClient(p fleetPlan, login ssh.Signer, steps []recipe.Step) benchRun {
	run := benchRun{client: "sortie"}
	var mu sync.Mutex
	start := time.Now()
	r := &runner{
		dial: func(ctx context.Context, cfg remote.DialConfig) (session, error) {
			c, err := remote.Dial(ctx, cfg)
			if err != nil {
				return nil, err
			}
			return &timedSession{Client: c, done: func() {
				mu.Lock()
				defer mu.Unlock()
				run.perHost = append(run.perHost, time.Since(start))
			}}, nil
		},
		signer: login, dialTimeout: DefaultDialTimeout, stepTimeout: DefaultStepTimeout,
		concurrency: DefaultConcurrency, handshakeTimeout: DefaultHandshakeTimeout,
		prefix: "bench", now: time.Now,
	}
	render := func(context.Context) ([]recipe.Step, []string, error) { return steps, nil, nil }
	results := r.bootstrapAll(context.Background(), slog.New(slog.DiscardHandler), p, render)
	run.wall = time.Since(start)
	for _, res := range results {
		if !res.OK || len(res.Steps) != len(steps) {
			run.failures++
			run.errors = append(run.errors, fmt.Sprintf("%s: %d steps, %s", res.SSHEndpoint, len(res.Steps), res.Error))
		}
	}
	return run
}

// timedSession notes when the bootstrapper is done with a host (it closes the connection).
type timedSession struct {
	*remote.Client
	once sync.Once
	done func()
}

func (s *timedSession) Close() error {
	s.once.Do(s.done)
	return s.Client.Close()
}

// rawClient runs the same steps with nothing but x/crypto/ssh: every host at once, a 30 s
// handshake timeout, one session per step, no retries.
func rawClient(p fleetPlan, login ssh.Signer, hostKey ssh.PublicKey, steps []recipe.Step) benchRun {
	run := benchRun{client: "raw"}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	cfg := &ssh.ClientConfig{
		User:              p.user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(login)},
		HostKeyCallback:   ssh.FixedHostKey(hostKey),
		HostKeyAlgorithms: []string{hostKey.Type()},
		Timeout:           30 * time.Second,
	}
	for _, in := range p.ev.Instances {
		wg.Go(func() {
			err := rawHost(in.SSHEndpoint, cfg, steps)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				run.failures++
				run.errors = append(run.errors, fmt.Sprintf("%s: %v", in.SSHEndpoint, err))
				return
			}
			run.perHost = append(run.perHost, time.Since(start))
		})
	}
	wg.Wait()
	run.wall = time.Since(start)
	return run
}

func rawHost(addr string, cfg *ssh.ClientConfig, steps []recipe.Step) error {
	conn, err := net.DialTimeout("tcp", addr, cfg.Timeout)
	if err != nil {
		return err
	}
	_ = conn.SetDeadline(time.Now().Add(cfg.Timeout))
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		return err
	}
	_ = conn.SetDeadline(time.Time{})
	c := ssh.NewClient(sc, chans, reqs)
	defer c.Close()
	for _, st := range steps {
		sess, err := c.NewSession()
		if err != nil {
			return fmt.Errorf("step %s: %w", st.Name, err)
		}
		var stdout bytes.Buffer
		sess.Stdout, sess.Stderr = &stdout, io.Discard
		if st.Stdin != nil {
			sess.Stdin = bytes.NewReader(st.Stdin)
		}
		err = sess.Run(st.Command)
		sess.Close()
		if err != nil {
			return fmt.Errorf("step %s: %w", st.Name, err)
		}
	}
	return nil
}

func envInt(t *testing.T, key string, def int) int {
	t.Helper()
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", key, v)
	}
	return n
}
