//go:build unix

package recipe

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// box is a scratch login directory: rendered commands run there with /bin/sh -c, HOME pointing
// at it, so that a quoting bug could only touch the box (and is detected).
type box struct {
	t   *testing.T
	dir string
}

const canary = "canary"

func newBox(t *testing.T) *box {
	t.Helper()
	b := &box{t: t, dir: t.TempDir()}
	if err := os.WriteFile(filepath.Join(b.dir, canary), []byte("alive"), 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// sh runs command as the SSH exec request would: sh -c COMMAND in the login directory.
// Processes it leaves behind (detached workloads) are killed when the test ends.
func (b *box) sh(command string, stdin []byte) (stdout, stderr string, err error) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Dir = b.dir
	cmd.Env = []string{"HOME=" + b.dir, "PATH=" + os.Getenv("PATH"), "LC_ALL=C"}
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a group of its own, to clean up
	cmd.WaitDelay = 5 * time.Second                       // a workload holding our pipes would hang Wait
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	b.t.Cleanup(func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })
	err = cmd.Wait()
	return out.String(), errb.String(), err
}

// mustSh runs command and fails the test unless it exits 0.
func (b *box) mustSh(command string, stdin []byte) string {
	b.t.Helper()
	out, errOut, err := b.sh(command, stdin)
	if err != nil {
		b.t.Fatalf("sh -c %q: %v\nstderr: %s", command, err, errOut)
	}
	return out
}

func (b *box) read(rel string) string {
	b.t.Helper()
	data, err := os.ReadFile(filepath.Join(b.dir, rel))
	if err != nil {
		b.t.Fatal(err)
	}
	return string(data)
}

// assertUntouched fails if a hostile value ran: a file named pwned exists or HOME was removed.
func (b *box) assertUntouched() {
	b.t.Helper()
	if _, err := os.Stat(filepath.Join(b.dir, canary)); err != nil {
		b.t.Fatalf("canary in HOME is gone: %v", err)
	}
	_ = filepath.WalkDir(b.dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), "pwned") {
			b.t.Errorf("side effect: %s exists", p)
		}
		return nil
	})
}

// status runs StatusCommand and parses it.
func (b *box) status(step string) Status {
	b.t.Helper()
	out := b.mustSh(StatusCommand(step), nil)
	st, err := ParseStatus(out)
	if err != nil {
		b.t.Fatal(err)
	}
	return st
}

// waitState polls the step's status until it is state.
func (b *box) waitState(step, state string) Status {
	b.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := b.status(step)
		if st.State == state {
			return st
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("step %s: status %+v, want %s", step, st, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func renderSample(t *testing.T, params map[string]string) map[string]Step {
	t.Helper()
	steps, err := Render(sample(t), params, RenderEnv{Presign: fakePresign})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Step{}
	for _, s := range steps {
		byName[s.Name] = s
	}
	return byName
}

// TestHostileValuesExecuted runs the rendered upload, run and start steps with /bin/sh for
// every hostile value: each value comes out byte for byte and nothing it says is executed.
func TestHostileValuesExecuted(t *testing.T) {
	for name, v := range hostile {
		t.Run(name, func(t *testing.T) {
			b := newBox(t)
			steps := renderSample(t, map[string]string{"bucket": "data", "p": v})

			up := steps["config"]
			b.mustSh(up.Command, up.Stdin)
			if got, want := b.read("etc/app dir/world.conf"), "p="+v+"\nnote=\n"; got != want {
				t.Errorf("uploaded %q, want %q", got, want)
			}

			if got := b.mustSh(steps["echo"].Command, nil); got != v {
				t.Errorf("run step printed %q, want %q", got, v)
			}

			for _, s := range []string{"worker", "defaultlog"} {
				if out := b.mustSh(steps[s].Command, nil); out != "" {
					t.Errorf("start %s printed %q", s, out)
				}
			}
			if st := b.waitState("worker", StateExited); st.ExitCode != 0 {
				t.Errorf("worker exit code %d, want 0 (stderr: %s)", st.ExitCode, b.read(StderrPath("worker")))
			}
			b.waitState("defaultlog", StateExited)
			if got := b.read(steps["worker"].Log); got != v {
				t.Errorf("worker log %q, want %q", got, v)
			}
			if got, want := b.read(steps["defaultlog"].Log), "--flag="+v+"\n"; got != want {
				t.Errorf("defaultlog log %q, want %q", got, want)
			}
			b.assertUntouched()
		})
	}
}

// TestStartLifecycle runs a start step for real: it detaches, records its pid and exit code,
// is reported running then exited, and a second bootstrap does not start it again.
func TestStartLifecycle(t *testing.T) {
	b := newBox(t)
	v := hostile["mixed"]
	w := renderSample(t, map[string]string{"bucket": "data", "p": v, "delay": "1", "code": "7"})["worker"]

	if st := b.status("worker"); st.State != StateNotStarted {
		t.Fatalf("before start: %+v", st)
	}
	began := time.Now()
	b.mustSh(w.Command, nil)
	if d := time.Since(began); d > 900*time.Millisecond {
		t.Errorf("start waited %s for a 1 s workload: not detached", d)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(b.read(PIDPath("worker"))))
	if err != nil {
		t.Fatal(err)
	}
	if st := b.status("worker"); st != (Status{State: StateRunning, PID: pid}) {
		t.Errorf("while running: %+v, want running %d", st, pid)
	}
	// The pid is the shell that records the exit code, not a wrapper around it (once nohup
	// has exec'd it: on a loaded machine the pid may still run nohup for a moment).
	var args []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err != nil {
			args = nil // no /proc, or already exited: nothing to check
			break
		}
		if args = strings.Split(string(cmdline), "\x00"); len(args) > 0 && args[0] != "nohup" {
			break
		}
	}
	if args != nil && (len(args) < 3 || args[0] != "sh" || args[1] != "-c" || !strings.Contains(args[2], "exit_code")) {
		t.Errorf("pid %d runs %q, want sh -c with the exit-code script", pid, args)
	}

	if st := b.waitState("worker", StateExited); st.ExitCode != 7 {
		t.Errorf("exit code %d, want 7", st.ExitCode)
	}
	if got := b.read(ExitCodePath("worker")); got != "7\n" {
		t.Errorf("exit_code file %q", got)
	}
	if got := b.read(w.Log); got != v {
		t.Errorf("log %q, want %q", got, v)
	}
	if got := b.read(w.Stderr); got != "" {
		t.Errorf("stderr %q, want empty", got)
	}

	// A re-bootstrap finds the marker and leaves everything alone.
	if out := b.mustSh(w.Command, nil); out != "sortie: step worker already started\n" {
		t.Errorf("second start printed %q", out)
	}
	if got := strings.TrimSpace(b.read(PIDPath("worker"))); got != strconv.Itoa(pid) {
		t.Errorf("pid file changed to %s", got)
	}
	if got := b.read(w.Log); got != v {
		t.Errorf("log after second start %q, want it untouched", got)
	}
	if got := b.mustSh(TailCommand(w.Log, 50), nil); got != v {
		t.Errorf("tail printed %q, want %q", got, v)
	}
	b.assertUntouched()
}

// TestStartKilled checks that a workload killed before it records an exit code is reported dead.
func TestStartKilled(t *testing.T) {
	b := newBox(t)
	w := renderSample(t, map[string]string{"bucket": "data", "p": "x", "delay": "30"})["worker"]
	b.mustSh(w.Command, nil)
	st := b.waitState("worker", StateRunning)
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	b.waitState("worker", StateDead)
}

// TestConcurrentStarts checks that racing bootstraps start the workload once.
func TestConcurrentStarts(t *testing.T) {
	b := newBox(t)
	w := renderSample(t, map[string]string{"bucket": "data", "p": "x", "delay": "0.5"})["worker"]
	outs := make(chan string, 8)
	for range cap(outs) {
		go func() {
			out, errOut, err := b.sh(w.Command, nil)
			if err != nil {
				out = "error: " + err.Error() + errOut
			}
			outs <- out
		}()
	}
	started := 0
	for range cap(outs) {
		switch out := <-outs; out {
		case "":
			started++
		case "sortie: step worker already started\n":
		default:
			t.Errorf("start printed %q", out)
		}
	}
	if started != 1 {
		t.Errorf("%d starts launched the workload, want 1", started)
	}
	b.waitState("worker", StateExited)
}

func TestTailExecuted(t *testing.T) {
	b := newBox(t)
	var lines []string
	for i := range 120 {
		lines = append(lines, "line "+strconv.Itoa(i))
	}
	name := "-odd name's.log"
	if err := os.WriteFile(filepath.Join(b.dir, name), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{50, 0, 3} {
		want := n
		if n == 0 {
			want = DefaultTailLines
		}
		got := b.mustSh(TailCommand(name, n), nil)
		if exp := strings.Join(lines[len(lines)-want:], "\n") + "\n"; got != exp {
			t.Errorf("tail %d printed %q, want the last %d lines", n, got, want)
		}
	}
}

// requireTool skips a test needing a binary a fresh Debian laptop may lack, unless
// SORTIE_REQUIRE_INTEROP=1 (CI), where its absence fails the test.
func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("SORTIE_REQUIRE_INTEROP") == "1" {
			t.Fatalf("%s not installed and SORTIE_REQUIRE_INTEROP=1: %v", name, err)
		}
		t.Skipf("%s not installed: skipping the real download (install %s, or set SORTIE_REQUIRE_INTEROP=1 to make this fatal)", name, name)
	}
}

// TestFetchExecuted downloads through a "presigned" URL with curl and wget for real; the URL
// carries shell metacharacters, which must reach the tool untouched.
func TestFetchExecuted(t *testing.T) {
	const body = "#!/bin/sh\necho tool\n"
	const query = "X-Amz-Signature=abc&x=;touch$IFS'pwned';&y=$(id)"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/data/tools/world/tool.sh" || r.URL.RawQuery != query {
			http.Error(w, "no such object "+r.URL.String(), http.StatusNotFound)
			return
		}
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()

	for _, fetcher := range []string{FetcherCurl, FetcherWget} {
		t.Run(fetcher, func(t *testing.T) {
			requireTool(t, fetcher)
			b := newBox(t)
			presign := func(bucket, key string) (string, error) {
				return srv.URL + "/" + bucket + "/" + key + "?" + query, nil
			}
			steps, err := Render(sample(t), map[string]string{"bucket": "data", "p": "x"}, RenderEnv{Presign: presign, Fetcher: fetcher})
			if err != nil {
				t.Fatal(err)
			}
			b.mustSh(steps[0].Command, nil)
			if got := b.read("bin/world tool.sh"); got != body {
				t.Errorf("fetched %q, want %q", got, body)
			}
			fi, err := os.Stat(filepath.Join(b.dir, "bin/world tool.sh"))
			if err != nil || fi.Mode().Perm() != 0o750 {
				t.Errorf("mode %v (%v), want 0750", fi.Mode(), err)
			}
			if strings.Contains(steps[0].Redacted, "Signature") || !strings.Contains(steps[0].Command, "Signature") {
				t.Errorf("Redacted %q must hide the URL that Command %q carries", steps[0].Redacted, steps[0].Command)
			}
			b.assertUntouched()

			// A missing object fails the step.
			missing, err := Render(sample(t), map[string]string{"bucket": "data", "p": "x", "who": "nobody"},
				RenderEnv{Presign: presign, Fetcher: fetcher})
			if err != nil {
				t.Fatal(err)
			}
			var exitErr *exec.ExitError
			if _, _, err := b.sh(missing[0].Command, nil); !errors.As(err, &exitErr) {
				t.Errorf("fetching a missing object: %v, want a non-zero exit", err)
			}
		})
	}
}

func TestUploadModeAndUmask(t *testing.T) {
	b := newBox(t)
	up := renderSample(t, map[string]string{"bucket": "data", "p": "x"})["config"]
	b.mustSh(up.Command, up.Stdin)
	for rel, want := range map[string]fs.FileMode{"etc/app dir/world.conf": 0o640, "etc/app dir": 0o700, "etc": 0o700} {
		fi, err := os.Stat(filepath.Join(b.dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", rel, fi.Mode().Perm(), want)
		}
	}
	// Uploading again replaces the content.
	b.mustSh(up.Command, []byte("new\n"))
	if got := b.read("etc/app dir/world.conf"); got != "new\n" {
		t.Errorf("after re-upload %q", got)
	}
}

// SizeCommand prints a log's size in bytes, 0 before it exists, and reads a path that
// starts with "-" as a file.
func TestSizeCommandExecuted(t *testing.T) {
	b := newBox(t)
	if out, _, err := b.sh(SizeCommand("logs/none.log"), nil); err != nil || strings.TrimSpace(out) != "0" {
		t.Fatalf("missing log: %q, %v; want 0", out, err)
	}
	b.mustSh("mkdir -p logs && printf 'line 1\\nline 2\\n' > logs/w.log && printf abc > ./-n", nil)
	if out := strings.TrimSpace(b.mustSh(SizeCommand("logs/w.log"), nil)); out != "14" {
		t.Errorf("size %q, want 14", out)
	}
	if out := strings.TrimSpace(b.mustSh(SizeCommand("-n"), nil)); out != "3" {
		t.Errorf("size of -n %q, want 3", out)
	}
}

// TestFoldExec runs folded steps with sh: the first run does every step and the
// bookkeeping, a rerun of the first command says Done and runs nothing, and a failing last
// step keeps its status and writes no marker.
func TestFoldExec(t *testing.T) {
	steps := []Step{
		{Name: "a", Command: "echo a >> ran", Rerun: true},
		{Name: "b", Command: "cat > got", Stdin: []byte("stdin-b"), Rerun: true},
		{Name: "c", Command: "umask 000; echo c >> ran", Rerun: true},
	}
	tests := []struct {
		name  string
		steps []Step
	}{
		{name: "three steps", steps: steps},
		{name: "one step", steps: steps[:1]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBox(t)
			folded := Fold(tt.steps, testBookkeeping)
			for _, st := range folded {
				if out := b.mustSh(st.Command, st.Stdin); IsDone(testBookkeeping, 0, []byte(out)) {
					t.Fatalf("step %s reported done on a fresh instance", st.Name)
				}
			}
			if got := b.read(".sortie/job.env"); got != string(testBookkeeping.EnvContent) {
				t.Errorf("job.env %q", got)
			}
			if got := b.read(".sortie/bootstrapped"); got != string(testBookkeeping.MarkerContent) {
				t.Errorf("marker %q", got)
			}
			for _, f := range []string{".sortie/job.env", ".sortie/bootstrapped"} {
				if fi, err := os.Stat(filepath.Join(b.dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
					t.Errorf("%s: mode %v, %v; want 0600", f, fi.Mode().Perm(), err)
				}
			}
			ran := b.read("ran")
			out := b.mustSh(folded[0].Command, folded[0].Stdin)
			if !IsDone(testBookkeeping, 0, []byte(out)) {
				t.Errorf("second run of the first command printed %q, want Done", out)
			}
			if b.read("ran") != ran {
				t.Error("a bootstrapped instance ran a step again")
			}
		})
	}
	t.Run("failing last step", func(t *testing.T) {
		b := newBox(t)
		failing := append(append([]Step(nil), steps[:2]...), Step{Name: "c", Command: "echo no >&2; exit 7"})
		folded := Fold(failing, testBookkeeping)
		b.mustSh(folded[0].Command, nil)
		b.mustSh(folded[1].Command, folded[1].Stdin)
		_, stderr, err := b.sh(folded[2].Command, nil)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 7 || stderr != "no\n" {
			t.Fatalf("last step: %v, stderr %q; want exit 7", err, stderr)
		}
		if _, err := os.Stat(filepath.Join(b.dir, ".sortie/bootstrapped")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("marker written after a failed step: %v", err)
		}
	})
}

// TestFollowCommand runs FollowCommand with sh against a state directory: it prints the
// start line number and the last lines of an exited workload's log and ends; with a live
// workload it goes on until the workload's process exits.
func TestFollowCommand(t *testing.T) {
	if _, err := exec.LookPath("tail"); err != nil {
		t.Skip("no tail")
	}
	dir := t.TempDir()
	sh := func(cmd string) string {
		t.Helper()
		c := exec.Command("sh", "-c", cmd)
		c.Dir = dir
		out, err := c.Output()
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		return string(out)
	}
	sh("mkdir -p .sortie/w logs && printf 'logs/w.log\\n' > .sortie/w/log-path && printf 'a\\nb\\nc\\nd\\n' > logs/w.log && echo 0 > .sortie/w/exit_code")
	if got := sh(FollowedStepsCommand()); got != "w\n" {
		t.Errorf("steps %q, want w", got)
	}
	for _, tc := range []struct {
		n    int
		want string
	}{{2, FollowStart + " 3\nc\nd\n"}, {0, FollowStart + " 1\na\nb\nc\nd\n"}, {9, FollowStart + " 1\na\nb\nc\nd\n"}} {
		if got := sh(FollowCommand("w", tc.n)); got != tc.want {
			t.Errorf("tail %d: %q, want %q", tc.n, got, tc.want)
		}
	}
	// A live workload: lines written after the command started arrive; it ends with the
	// process. The workload writes its line only once the follower has shown the old ones.
	sh("rm .sortie/w/exit_code")
	c := exec.Command("sh", "-c", "while ! test -f go; do sleep 0.05; done; echo e >> logs/w.log; sleep 0.3")
	c.Dir = dir
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan error, 1) // reaped at once: a zombie would look alive to kill -0
	go func() { reaped <- c.Wait() }()
	sh(fmt.Sprintf("echo %d > .sortie/w/pid", c.Process.Pid))
	f := exec.Command("sh", "-c", FollowCommand("w", 1))
	f.Dir = dir
	out, err := f.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(out)
	var got []string
	for len(got) < 2 {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		got = append(got, l)
	}
	sh("touch go")
	rest, _ := io.ReadAll(br)
	if err := f.Wait(); err != nil {
		t.Errorf("follow: %v", err)
	}
	<-reaped
	if all := strings.Join(got, "") + string(rest); all != FollowStart+" 4\nd\ne\n" {
		t.Errorf("live: %q, want the last line, then e", all)
	}
}
