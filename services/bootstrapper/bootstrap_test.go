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
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/remote"
)

const testHostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"

func testOps(t *testing.T) *opsconfig.Config {
	t.Helper()
	return cloudtest.LoadOps(t, "testdata/ops.yaml")
}

func testEvent() events.FleetLaunched {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	return events.FleetLaunched{
		Header:       events.NewHeader("job-42", "corr-7", now),
		FleetID:      "job-42",
		PlanRevision: 1,
		Template:     "test",
		Recipe:       "test",
		Params:       map[string]string{"bucket": "tools"},
		DeadlineAt:   now.Add(time.Hour),
		KeyName:      "sortie-test",
		HostKey:      testHostKey,
		Instances: []events.Instance{
			{ID: "i-0123456789abcdef0", InstanceType: "t3.micro", SSHEndpoint: "127.0.0.1:2201", LaunchedAt: now},
		},
	}
}

func TestPlanFleet(t *testing.T) {
	ops := testOps(t)
	tests := []struct {
		name     string
		edit     func(*events.FleetLaunched)
		wantUser string
		wantErr  []string
	}{
		{name: "template user", wantUser: "worker"},
		{name: "no template: default user", edit: func(e *events.FleetLaunched) { e.Template = "" }, wantUser: opsconfig.DefaultUser},
		{name: "unknown recipe", edit: func(e *events.FleetLaunched) { e.Recipe = "nope" }, wantErr: []string{`unknown recipe "nope"`}},
		{name: "unknown template", edit: func(e *events.FleetLaunched) { e.Template = "nope" }, wantErr: []string{`unknown template "nope"`}},
		{name: "bad host key", edit: func(e *events.FleetLaunched) { e.HostKey = "ssh-ed25519 !!!" }, wantErr: []string{"host_key"}},
		{name: "two host keys", edit: func(e *events.FleetLaunched) { e.HostKey = testHostKey + "\n" + testHostKey }, wantErr: []string{"more than one key"}},
		{name: "no host key for derived keys", edit: func(e *events.FleetLaunched) { e.HostKey = "" }, wantErr: []string{`host_key: required: template "test"'s host keys are derived`}},
		{
			name:    "every problem at once",
			edit:    func(e *events.FleetLaunched) { e.Recipe, e.Template, e.HostKey = "r", "t", "x" },
			wantErr: []string{`unknown recipe "r"`, `unknown template "t"`, "host_key"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := testEvent()
			if tt.edit != nil {
				tt.edit(&ev)
			}
			p, err := planFleet(ev, ops)
			if tt.wantErr != nil {
				if err == nil || !bus.IsPermanent(err) {
					t.Fatalf("planFleet error = %v, want a permanent error", err)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("planFleet: %v", err)
			}
			if p.user != tt.wantUser {
				t.Errorf("user = %q, want %q", p.user, tt.wantUser)
			}
			want, _, _, _, _ := ssh.ParseAuthorizedKey([]byte(testHostKey))
			if p.instanceKeys || !bytes.Equal(p.hostKey.Marshal(), want.Marshal()) {
				t.Error("host key not the event's")
			}
			if len(p.recipe.Steps) != 5 {
				t.Errorf("recipe has %d steps, want 5", len(p.recipe.Steps))
			}
		})
	}
}

// A template whose instances make their own host keys: the event's host key, if any, is
// ignored; each instance's key is read from its console.
func TestPlanFleetInstanceHostKeys(t *testing.T) {
	for _, hk := range []string{"", testHostKey} {
		ev := testEvent()
		ev.Template, ev.HostKey = "own-keys", hk
		p, err := planFleet(ev, testOps(t))
		if err != nil {
			t.Fatal(err)
		}
		if !p.instanceKeys || p.hostKey != nil || !p.publicIP || p.user != "worker" {
			t.Errorf("host key %q: instance keys %t, key %v, public IP %t, user %s; want instance keys, no fleet key, public IP, worker",
				hk, p.instanceKeys, p.hostKey, p.publicIP, p.user)
		}
	}
}

func TestJobEnv(t *testing.T) {
	got := JobEnv(testEvent(), "i-0123456789abcdef0", "sortie-test")
	want, err := os.ReadFile("testdata/job.env.golden")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("job.env:\n%s\nwant:\n%s", got, want)
	}
}

func TestRedactAndClip(t *testing.T) {
	secret := "http://127.0.0.1:4566/tools/tool.sh?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=test%2F20250102&X-Amz-Signature=abc123"
	other := "curl: (22) https://bucket.s3.amazonaws.com/k?X-Amz-Signature=deadbeef&X-Amz-Expires=300 returned 403"
	tests := []struct {
		name, in, want string
	}{
		{name: "exact secret", in: "GET " + secret + " failed", want: "GET <presigned URL> failed"},
		{name: "any presigned URL", in: other, want: "curl: (22) <presigned URL> returned 403"},
		{name: "plain URL kept", in: "see https://example.com/docs", want: "see https://example.com/docs"},
		{name: "invalid UTF-8", in: "a\xffb", want: "a\uFFFDb"},
		{name: "NUL dropped", in: "a\x00b", want: "ab"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := clipText(redact(tt.in, []string{secret})); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("long line clipped at a rune boundary", func(t *testing.T) {
		long := strings.Repeat("é", events.MaxTextBytes) // 2 bytes each
		got := clipText(long)
		if len(got) > events.MaxTextBytes || !strings.HasSuffix(got, "…") || !strings.HasPrefix(got, "éé") {
			t.Fatalf("clipped to %d bytes, suffix %q", len(got), got[len(got)-8:])
		}
		if !bytes.Equal([]byte(strings.ToValidUTF8(got, "?")), []byte(got)) {
			t.Fatal("clipped text is not valid UTF-8")
		}
	})
}

func TestOutputTail(t *testing.T) {
	var stdout strings.Builder
	for i := 1; i <= 80; i++ {
		fmt.Fprintf(&stdout, "%d\n", i)
	}
	tests := []struct {
		name           string
		stdout, stderr string
		want           []string
	}{
		{name: "stdout then stderr", stdout: "a\nb\n", stderr: "c\n", want: []string{"a", "b", "c"}},
		{name: "no final newline", stdout: "a", stderr: "b", want: []string{"a", "b"}},
		{name: "stderr only", stderr: "boom\n", want: []string{"boom"}},
		{name: "nothing", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := outputTail(remote.Result{Stdout: []byte(tt.stdout), Stderr: []byte(tt.stderr)}, TailLines, nil)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("tail = %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("last 50 lines", func(t *testing.T) {
		got := outputTail(remote.Result{Stdout: []byte(stdout.String()), Stderr: []byte("boom\n")}, TailLines, nil)
		if len(got) != 50 || got[0] != "32" || got[48] != "80" || got[49] != "boom" {
			t.Fatalf("tail = %q", got)
		}
	})
}

// fakeSession records what the runner does on an instance. It sees the folded commands
// and records each as "run STEP" plus "+check", "+env" and "+marker" for the bookkeeping
// folded in; the job environment and marker are parsed back out of the command.
type fakeSession struct {
	mu      sync.Mutex
	calls   []string
	stdins  map[string]string
	files   map[string]string // written by the folded bookkeeping
	marker  bool
	results map[string]remote.Result // by step command; default exit 0
	runErr  map[string][]error       // by step command: the errors of its successive runs
	closed  bool
}

func newFake() *fakeSession {
	return &fakeSession{stdins: map[string]string{}, files: map[string]string{}, results: map[string]remote.Result{}, runErr: map[string][]error{}}
}

var (
	stepCmdRe = regexp.MustCompile(`cmd-[a-z]`)
	doneRe    = regexp.MustCompile(`then echo '(sortie: already bootstrapped [0-9a-f]+)'; exit 0`)
	writeRe   = regexp.MustCompile(`(?s)printf %s '((?:[^']|'"'"')*)' > ([^ )]+)`)
)

func (f *fakeSession) Run(_ context.Context, cmd string, stdin io.Reader) (remote.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	step := stepCmdRe.FindString(cmd)
	call := "run " + step
	done := doneRe.FindStringSubmatch(cmd)
	if done != nil {
		call += " +check"
	}
	if strings.Contains(cmd, JobEnvPath) {
		call += " +env"
	}
	if strings.Contains(cmd, "> "+MarkerPath+" ") {
		call += " +marker"
	}
	f.calls = append(f.calls, call)
	if done != nil && f.marker {
		return remote.Result{Stdout: []byte(done[1] + "\n")}, nil
	}
	if stdin != nil {
		b, _ := io.ReadAll(stdin)
		f.stdins[step] = string(b)
	}
	if errs := f.runErr[step]; len(errs) > 0 {
		err := errs[0]
		f.runErr[step] = errs[1:]
		if err != nil {
			return remote.Result{ExitCode: -1, Stdout: []byte("partial\n")}, err
		}
	}
	res := f.results[step]
	if res.ExitCode == 0 {
		for _, m := range writeRe.FindAllStringSubmatch(cmd, -1) {
			f.files[m[2]] = strings.ReplaceAll(m[1], `'"'"'`, "'")
		}
	}
	return res, nil
}

func (f *fakeSession) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

var testSteps = []recipe.Step{
	{Name: "a", Kind: "run", Command: "cmd-a", Redacted: "cmd-a"},
	{Name: "b", Kind: "upload", Command: "cmd-b", Stdin: []byte("content-b"), Redacted: "cmd-b", Rerun: true},
	{Name: "c", Kind: "start", Command: "cmd-c", Redacted: "cmd-c", Rerun: true},
}

const secretURL = "http://127.0.0.1:1/b/k?X-Amz-Signature=s3cr3t"

func staticRender(ctx context.Context) ([]recipe.Step, []string, error) {
	return testSteps, []string{secretURL}, nil
}

// eventTargets trusts the event's endpoints and the plan's key: for unit tests of the
// runner only (the service resolves targets from EC2, see hosts_test.go).
func eventTargets(p fleetPlan) targetFunc {
	return func(_ context.Context, id string) (string, ssh.PublicKey, error) {
		for _, in := range p.ev.Instances {
			if in.ID == id {
				return in.SSHEndpoint, p.hostKey, nil
			}
		}
		return "", nil, errNoTarget
	}
}

func testRunner(dial dialFunc) *runner {
	return &runner{
		dial: dial, dialTimeout: time.Second, stepTimeout: time.Second,
		concurrency: 4, prefix: "sortie-test", now: time.Now,
	}
}

// connLost is what remote.Run returns when the connection drops under a command.
var connLost = fmt.Errorf("running command on x: %w: EOF", remote.ErrConnection)

// sessionLost is what remote.Run returns when no session could be opened.
var sessionLost = fmt.Errorf("opening ssh session on x: %w: %w: i/o timeout", remote.ErrConnection, remote.ErrNotStarted)

func TestBootstrapInstance(t *testing.T) {
	lines := strings.Repeat("line\n", 79) + "fetching " + secretURL + "\n"
	allSteps := []string{"run cmd-a +check +env", "run cmd-b", "run cmd-c +marker"}
	tests := []struct {
		name      string
		setup     func(f *fakeSession)
		dialErr   error
		wantOK    bool
		wantDials int
		wantCalls []string
		wantSteps []string // name:exit
		wantErr   string
		check     func(t *testing.T, f *fakeSession, r events.InstanceResult)
	}{
		{
			name:      "every step succeeds, one session each",
			wantOK:    true,
			wantDials: 1,
			wantCalls: allSteps,
			wantSteps: []string{"a:0", "b:0", "c:0"},
			check: func(t *testing.T, f *fakeSession, r events.InstanceResult) {
				if f.files[JobEnvPath] != string(JobEnv(testEvent(), "i-0123456789abcdef0", "sortie-test")) {
					t.Errorf("job.env = %q", f.files[JobEnvPath])
				}
				if f.stdins["cmd-b"] != "content-b" {
					t.Errorf("step b stdin = %q, want its content", f.stdins["cmd-b"])
				}
				if !strings.Contains(f.files[MarkerPath], "job=job-42") {
					t.Errorf("marker = %q", f.files[MarkerPath])
				}
			},
		},
		{
			name:      "already bootstrapped: runs nothing",
			setup:     func(f *fakeSession) { f.marker = true },
			wantOK:    true,
			wantDials: 1,
			wantCalls: allSteps[:1],
			wantSteps: []string{AlreadyBootstrapped + ":0"},
		},
		{
			name: "a failing step stops the instance with its tail",
			setup: func(f *fakeSession) {
				f.results["cmd-b"] = remote.Result{ExitCode: 3, Stdout: []byte(lines), Stderr: []byte("boom\n")}
			},
			wantDials: 1,
			wantCalls: allSteps[:2],
			wantSteps: []string{"a:0", "b:3"},
			wantErr:   "step b exited with status 3",
			check: func(t *testing.T, f *fakeSession, r events.InstanceResult) {
				tail := r.Steps[1].OutputTail
				if len(tail) != TailLines || tail[49] != "boom" || tail[48] != "fetching <presigned URL>" {
					t.Errorf("tail = %q", tail)
				}
				if r.Steps[0].OutputTail != nil {
					t.Errorf("successful step has a tail: %q", r.Steps[0].OutputTail)
				}
			},
		},
		{
			name:      "connection lost during a rerunnable step: redial and resume there",
			setup:     func(f *fakeSession) { f.runErr["cmd-b"] = []error{connLost} },
			wantOK:    true,
			wantDials: 2,
			wantCalls: []string{"run cmd-a +check +env", "run cmd-b", "run cmd-b", "run cmd-c +marker"},
			wantSteps: []string{"a:0", "b:0", "c:0"},
		},
		{
			name:      "first session not opened: redial, the folded check runs again",
			setup:     func(f *fakeSession) { f.runErr["cmd-a"] = []error{sessionLost, sessionLost} },
			wantOK:    true,
			wantDials: 3,
			wantCalls: []string{"run cmd-a +check +env", "run cmd-a +check +env", "run cmd-a +check +env", "run cmd-b", "run cmd-c +marker"},
			wantSteps: []string{"a:0", "b:0", "c:0"},
		},
		{
			name:      "connection lost during a run step not declared safe: not rerun",
			setup:     func(f *fakeSession) { f.runErr["cmd-a"] = []error{connLost} },
			wantDials: 1,
			wantCalls: allSteps[:1],
			wantSteps: []string{"a:-1"},
			wantErr:   "step a: running command on x: ssh connection lost: EOF (run steps are rerun only when the recipe says rerun: safe)",
		},
		{
			name:      "connection keeps dropping: gives up after MaxRedials",
			setup:     func(f *fakeSession) { f.runErr["cmd-c"] = []error{connLost, connLost, connLost, connLost} },
			wantDials: 1 + MaxRedials,
			wantCalls: []string{"run cmd-a +check +env", "run cmd-b", "run cmd-c +marker", "run cmd-c +marker", "run cmd-c +marker", "run cmd-c +marker"},
			wantSteps: []string{"a:0", "b:0", "c:-1"},
			wantErr:   "step c: running command on x: ssh connection lost: EOF",
		},
		{
			name:      "host key mismatch",
			dialErr:   fmt.Errorf("dialing ssh worker@127.0.0.1:2201 (1 attempts in 2ms): %w: server presented ...", remote.ErrHostKeyMismatch),
			wantDials: 1,
			wantErr:   "connecting: dialing ssh worker@127.0.0.1:2201 (1 attempts in 2ms): ssh host key mismatch",
			wantCalls: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake()
			if tt.setup != nil {
				tt.setup(f)
			}
			var dialed remote.DialConfig
			dials := 0
			r := testRunner(func(_ context.Context, cfg remote.DialConfig) (session, error) {
				dialed = cfg
				dials++
				if tt.dialErr != nil {
					return nil, tt.dialErr
				}
				return f, nil
			})
			p, err := planFleet(testEvent(), testOps(t))
			if err != nil {
				t.Fatal(err)
			}
			p.target = eventTargets(p)
			res := r.bootstrap(context.Background(), slog.New(slog.DiscardHandler), p, p.ev.Instances[0], staticRender, r.newGate(1))

			if dialed.Addr != "127.0.0.1:2201" || dialed.User != "worker" || dialed.HostKey == nil || dialed.Gate == nil {
				t.Errorf("dialed %+v, want the instance's endpoint as worker with the pinned key, through the gate", dialed)
			}
			if dials != tt.wantDials {
				t.Errorf("dialled %d times, want %d", dials, tt.wantDials)
			}
			if res.OK != tt.wantOK {
				t.Errorf("OK = %v (error %q), want %v", res.OK, res.Error, tt.wantOK)
			}
			if tt.wantErr != "" && !strings.HasPrefix(res.Error, tt.wantErr) {
				t.Errorf("error = %q, want prefix %q", res.Error, tt.wantErr)
			}
			if tt.wantErr == "" && res.Error != "" {
				t.Errorf("error = %q, want none", res.Error)
			}
			if fmt.Sprint(f.calls) != fmt.Sprint(tt.wantCalls) {
				t.Errorf("calls:\n %q\nwant:\n %q", f.calls, tt.wantCalls)
			}
			var steps []string
			for _, s := range res.Steps {
				steps = append(steps, fmt.Sprintf("%s:%d", s.Name, s.ExitCode))
			}
			if fmt.Sprint(steps) != fmt.Sprint(tt.wantSteps) {
				t.Errorf("steps = %v, want %v", steps, tt.wantSteps)
			}
			if tt.dialErr == nil && !f.closed {
				t.Error("connection not closed")
			}
			if b, _ := json.Marshal(res); bytes.Contains(b, []byte("s3cr3t")) {
				t.Errorf("result leaks the presigned URL: %s", b)
			}
			if tt.check != nil {
				tt.check(t, f, res)
			}
		})
	}
}

func TestBootstrapAllBoundsConcurrency(t *testing.T) {
	tests := []struct {
		name        string
		concurrency int
		instances   int
		wantMax     int32
	}{
		{name: "set lower than the fleet", concurrency: 3, instances: 10, wantMax: 3},
		{name: "default: the whole fleet at once", concurrency: 0, instances: 10, wantMax: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var inFlight, maxSeen atomic.Int32
			release := make(chan struct{})
			var once sync.Once
			r := testRunner(func(ctx context.Context, cfg remote.DialConfig) (session, error) {
				n := inFlight.Add(1)
				defer inFlight.Add(-1)
				for {
					m := maxSeen.Load()
					if n <= m || maxSeen.CompareAndSwap(m, n) {
						break
					}
				}
				if n == tt.wantMax {
					once.Do(func() { close(release) }) // every dial the limit admits is in flight at once
				}
				select {
				case <-release:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				if cfg.Addr == "127.0.0.1:2205" {
					return nil, errors.New("unreachable")
				}
				return newFake(), nil
			})
			r.concurrency = tt.concurrency
			r.dialTimeout = time.Minute
			ev := testEvent()
			ev.Instances = nil
			for i := range tt.instances {
				ev.Instances = append(ev.Instances, events.Instance{
					ID: fmt.Sprintf("i-%017x", i), InstanceType: "t3.micro", SSHEndpoint: fmt.Sprintf("127.0.0.1:%d", 2200+i), LaunchedAt: ev.Time,
				})
			}
			p, err := planFleet(ev, testOps(t))
			if err != nil {
				t.Fatal(err)
			}
			p.target = eventTargets(p)
			results := r.bootstrapAll(context.Background(), slog.New(slog.DiscardHandler), p, staticRender)
			if got := maxSeen.Load(); got != tt.wantMax {
				t.Errorf("max concurrent dials = %d, want %d", got, tt.wantMax)
			}
			for i, res := range results {
				if res.ID != ev.Instances[i].ID {
					t.Fatalf("result %d is %s, want %s: order lost", i, res.ID, ev.Instances[i].ID)
				}
				if wantOK := i != 5; res.OK != wantOK {
					t.Errorf("instance %d OK = %v (%s), want %v: one failure must not affect the others", i, res.OK, res.Error, wantOK)
				}
			}
		})
	}
}

func TestFitShrinksLargeFleets(t *testing.T) {
	ev := events.FleetBootstrapped{
		Header: events.NewHeader("job-42", "corr-7", time.Now()), FleetID: "job-42", Recipe: "test",
		DeadlineAt: time.Now().Add(time.Hour), HostKey: testHostKey, KeyName: "k",
	}
	long := strings.Repeat("x", 1000)
	for i := range 200 {
		var tail []string
		for range TailLines {
			tail = append(tail, long)
		}
		ev.Instances = append(ev.Instances, events.InstanceResult{
			ID: fmt.Sprintf("i-%017x", i), SSHEndpoint: "127.0.0.1:22", Error: "step s exited with status 1",
			Steps: []events.StepResult{{Name: "s", ExitCode: 1, OutputTail: tail}},
		})
	}
	if _, err := events.Encode(ev); err == nil {
		t.Fatal("test event fits already; make it larger")
	}
	got := fit(ev)
	b, err := events.Encode(got)
	if err != nil {
		t.Fatalf("fitted event does not encode: %v", err)
	}
	if len(b) > events.MaxBodyBytes {
		t.Fatalf("fitted event is %d bytes", len(b))
	}
	if len(got.Instances[0].Steps[0].OutputTail) == 0 {
		t.Error("fit dropped every tail, where shorter tails would have fitted")
	}
	if len(ev.Instances[0].Steps[0].OutputTail[0]) != 1000 {
		t.Error("fit modified its input")
	}

	small := ev
	small.Instances = ev.Instances[:2]
	if got := fit(small); len(got.Instances[1].Steps[0].OutputTail) != TailLines || len(got.Instances[1].Steps[0].OutputTail[0]) != 1000 {
		t.Error("fit shortened an event that fits")
	}
}
