package main

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUpScript runs deployments/local/up.sh (`task up`) for real: `sortie localcloud`, infra
// up, demo prepare and the five services as separate processes built from this tree, then
// the demo job. It must succeed as `sortie dev` does and leave no process running.
func TestUpScript(t *testing.T) {
	if testing.Short() {
		t.Skip("up.sh: builds the binaries and runs the demo as separate processes; not in -short")
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		if os.Getenv("SORTIE_REQUIRE_INTEROP") == "1" {
			t.Fatalf("up.sh needs bash: %v", err)
		}
		t.Skipf("up.sh needs bash, not found: %v", err)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	bin := buildBin(t, root)
	runDir := t.TempDir()
	port := freePort(t)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bash, filepath.Join(root, "deployments", "local", "up.sh"), bin)
	cmd.Env = append(os.Environ(), "PORT="+port, "SORTIE_RUN_DIR="+runDir, "SORTIE_PREFIX=uptest", "DEMO_TIMEOUT=90s")
	// On timeout, SIGTERM: the script's trap stops what it started.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	started := time.Now()
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	t.Logf("up.sh took %s:\n%s", time.Since(started).Round(100*time.Millisecond), out)
	if err != nil {
		t.Fatalf("up.sh: %v", err)
	}

	for _, want := range []string{
		"FleetTerminated    succeeded",
		"tasks:       202 succeeded, 0 failed",
		"outcome:     succeeded",
		"terminated:  3 instances",
		"up: stopped 6 processes; logs in " + runDir,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	for _, name := range []string{"planner", "provisioner", "bootstrapper", "monitor", "reaper"} {
		if !regexp.MustCompile(`(?m)^up: ` + name + ` +http://127\.0\.0\.1:\d+/healthz /readyz /metrics$`).MatchString(out) {
			t.Errorf("output does not say where %s serves /healthz", name)
		}
	}
	archives := regexp.MustCompile(`s3://uptest-logs/logs/demo-[^/ ]+/i-[0-9a-f]+\.tar\.gz \(\d+ bytes\)`).FindAllString(out, -1)
	if len(archives) != 3 {
		t.Errorf("want 3 archives in the summary, got %d: %q", len(archives), archives)
	}

	// Every process the script started is gone, and each service ran as its own process.
	pids := readPids(t, filepath.Join(runDir, "pids"))
	wantNames := []string{"localcloud", "planner", "provisioner", "bootstrapper", "monitor", "reaper"}
	if len(pids) != len(wantNames) {
		t.Fatalf("pids file lists %v, want %v", pids, wantNames)
	}
	seen := map[int]bool{}
	for i, p := range pids {
		if p.name != wantNames[i] {
			t.Errorf("pids file entry %d is %q, want %q", i, p.name, wantNames[i])
		}
		if seen[p.pid] {
			t.Errorf("pid %d listed twice", p.pid)
		}
		seen[p.pid] = true
		if err := syscall.Kill(p.pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s (pid %d) still running after up.sh exited (kill 0: %v)", p.name, p.pid, err)
		}
		if p.name == "localcloud" {
			continue
		}
		log, err := os.ReadFile(filepath.Join(runDir, p.name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(log), `"msg":"consuming","service":"`+p.name+`"`) {
			t.Errorf("%s.log does not show %s consuming:\n%s", p.name, p.name, log)
		}
	}
	// Nothing built for this test runs any more: not the services, not the local cloud,
	// not a sortie-worker on an instance.
	if runtime.GOOS == "linux" {
		for _, p := range processesOf(t, bin) {
			t.Errorf("process %d (%s) is still running", p.pid, p.name)
		}
	}
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second); err == nil {
		c.Close()
		t.Errorf("the local cloud's port %s is still open", port)
	}
}

// buildBin builds sortie and the five services into a temporary directory, with the
// sortie-worker symlink `task build` makes.
func buildBin(t *testing.T, root string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := t.TempDir()
	build := exec.Command(goTool, "build", "-o", bin+string(filepath.Separator), "./cmd/sortie", "./services/...")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if err := os.Symlink("sortie", filepath.Join(bin, "sortie-worker")); err != nil {
		t.Fatal(err)
	}
	return bin
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

type proc struct {
	name string
	pid  int
}

// readPids reads up.sh's pids file: "NAME PID" a line.
func readPids(t *testing.T, path string) []proc {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ps []proc
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, pid, ok := strings.Cut(sc.Text(), " ")
		n, err := strconv.Atoi(pid)
		if !ok || err != nil {
			t.Fatalf("pids file line %q: want NAME PID", sc.Text())
		}
		ps = append(ps, proc{name, n})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return ps
}

// processesOf lists the running processes whose executable is in dir (Linux /proc).
func processesOf(t *testing.T, dir string) []proc {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var ps []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || filepath.Dir(exe) != dir {
			continue
		}
		ps = append(ps, proc{filepath.Base(exe), pid})
	}
	return ps
}
