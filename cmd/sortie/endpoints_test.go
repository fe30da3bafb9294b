package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
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

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
)

// process is one binary the test started, its output kept.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *cloudtest.Buffer
	done chan error
}

// startProcess runs bin with env in the background; at cleanup it is sent SIGTERM and,
// 20 s later, SIGKILL.
func startProcess(t *testing.T, name string, env []string, bin string, args ...string) *process {
	t.Helper()
	p := &process{name: name, cmd: exec.Command(bin, args...), out: &cloudtest.Buffer{}, done: make(chan error, 1)}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.exited() {
			return
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			t.Errorf("%s did not stop 20 s after SIGTERM: killed", name)
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("output of %s:\n%s", name, p.out)
		}
	})
	return p
}

func (p *process) exited() bool { return p.cmd.ProcessState != nil }

var servingRE = regexp.MustCompile(`"msg":"serving health and metrics".*?"addr":"([^"]+)"`)

// endpoint waits for the service to log where it serves and returns its base URL.
func (p *process) endpoint(t *testing.T) string {
	t.Helper()
	var url string
	cloudtest.Eventually(t, 30*time.Second, func() error {
		if m := servingRE.FindStringSubmatch(p.out.String()); m != nil {
			url = "http://" + m[1]
			return nil
		}
		select {
		case err := <-p.done:
			p.done <- err
			return fmt.Errorf("%s exited (%v):\n%s", p.name, err, p.out)
		default:
		}
		return fmt.Errorf("%s has not logged its endpoint yet", p.name)
	})
	return url
}

// vmRSS is the process's resident set (Linux /proc), in KiB.
func vmRSS(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(data)
	if m == nil {
		t.Fatalf("no VmRSS in /proc/%d/status", pid)
	}
	kb, _ := strconv.Atoi(string(m[1]))
	return kb
}

func readyz(t *testing.T, url string) (int, string) {
	t.Helper()
	return cloudtest.Get(t, url+"/readyz")
}

// TestServiceEndpoints runs the five services as separate processes against `sortie
// localcloud`, as `task up` does, with their ops config in S3 (the monitor's in SSM), and
// checks what they serve on SORTIE_HTTP_ADDR: /healthz at once; /readyz 503 naming the
// missing queues until `infra up` creates them, then 200; /metrics whose counters move
// when the demo job runs; a SIGHUP reloads the config; on SIGTERM a service with a
// message in flight answers /readyz 503 (draining) and /healthz 200 until it has
// finished the message, then exits 0. It logs every service's idle RSS.
func TestServiceEndpoints(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries and runs the demo as separate processes; not in -short")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	bin := buildBin(t, root)
	run := t.TempDir()
	port := freePort(t)
	endpoint := "http://127.0.0.1:" + port
	prefix := strings.ToLower(cloudtest.Unique("ep"))
	release := filepath.Join(run, "release")
	env := append(os.Environ(),
		"AWS_ENDPOINT_URL="+endpoint, "AWS_REGION=us-east-1", "AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test",
		"AWS_SESSION_TOKEN=", "AWS_PROFILE=", "SORTIE_PREFIX="+prefix, "SORTIE_LOCAL_MODE=1", "SORTIE_HTTP_ADDR=127.0.0.1:0",
		"SORTIE_CONFIG=", "SORTIE_CONFIG_RELOAD=", "SORTIE_ROLE_ARN=",
	)

	cloud := startProcess(t, "localcloud", env, filepath.Join(bin, "sortie"), "localcloud", "--addr", "127.0.0.1:"+port,
		"--instance-path", bin, "--data-dir", filepath.Join(run, "instances"))
	cloudtest.Eventually(t, 60*time.Second, func() error {
		if !strings.Contains(cloud.out.String(), "local cloud serving on") {
			return errors.New("local cloud not serving yet")
		}
		return nil
	})

	// The ops config: the embedded one plus a recipe whose run step waits for a file, so
	// a bootstrap can be held in flight; in S3 for most services, in SSM for the monitor.
	ops := append(opsconfig.DefaultYAML(), []byte(`
  hold:
    steps:
      - name: wait
        run:
          argv: [sh, -c, "while [ ! -f '`+release+`' ]; do sleep 0.05; done"]
      - name: work
        start:
          argv: [sh, -c, "echo done"]
`)...)
	if _, err := opsconfig.Parse(ops); err != nil {
		t.Fatalf("the test's ops config: %v", err)
	}
	awsCfg := awsx.ForEndpoint(endpoint)
	s3c := s3.NewFromConfig(awsCfg, awsx.S3Options(awsCfg))
	ctx := t.Context()
	bucket := prefix + "-config"
	if _, err := s3c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatal(err)
	}
	putConfig := func(data []byte) {
		t.Helper()
		if _, err := s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("ops.yaml"), Body: bytes.NewReader(data)}); err != nil {
			t.Fatal(err)
		}
	}
	putConfig(ops)
	param := "/" + prefix + "/ops"
	if _, err := ssm.NewFromConfig(awsCfg).PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String(param), Value: aws.String(string(ops)),
		Type: ssmtypes.ParameterTypeSecureString}); err != nil {
		t.Fatal(err)
	}
	s3Config := "SORTIE_CONFIG=s3://" + bucket + "/ops.yaml"
	fast := []string{"SORTIE_WAITER_MIN_DELAY=100ms", "SORTIE_WAITER_MAX_DELAY=1s", "SORTIE_LAUNCH_TIMEOUT=1m",
		"SORTIE_BOOTSTRAP_DIAL_TIMEOUT=30s", "SORTIE_MONITOR_INTERVAL=1s", "SORTIE_POLL_WAIT=1s",
		"SORTIE_METRICS_FLUSH=500ms", "SORTIE_ARCHIVE_TIMEOUT=30s"}
	svcEnv := func(extra ...string) []string {
		return append(append(append([]string{}, env...), fast...), extra...)
	}

	// Started before `infra up`: alive, not ready, and saying why.
	secret := strings.Repeat("ab", 32)
	early := map[string]*process{
		bus.Planner:     startProcess(t, bus.Planner, svcEnv(s3Config), filepath.Join(bin, bus.Planner)),
		bus.Provisioner: startProcess(t, bus.Provisioner, svcEnv(s3Config, "SORTIE_HOSTKEY_SECRET="+secret), filepath.Join(bin, bus.Provisioner)),
	}
	urls := map[string]string{}
	topo := bus.Topology{Prefix: prefix}
	for name, p := range early {
		urls[name] = p.endpoint(t)
		if code, body := cloudtest.Get(t, urls[name]+"/healthz"); code != http.StatusOK {
			t.Errorf("%s /healthz before infra up: %d %s", name, code, body)
		}
		queue := topo.QueueName(name, map[string]string{bus.Planner: bus.JobSubmitted, bus.Provisioner: bus.FleetPlanned}[name])
		cloudtest.Eventually(t, 30*time.Second, func() error {
			code, body := readyz(t, urls[name])
			if code != http.StatusServiceUnavailable || !strings.Contains(body, "queue "+queue+" does not exist") || !strings.Contains(body, "sortie infra up") {
				return fmt.Errorf("%s /readyz before infra up = %d %q, want 503 naming queue %s and the fix", name, code, body, queue)
			}
			return nil
		})
	}

	sortie := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, "sortie"), args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sortie %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	sortie("infra", "up")
	for name := range early {
		cloudtest.Eventually(t, 60*time.Second, func() error {
			if code, body := readyz(t, urls[name]); code != http.StatusOK {
				return fmt.Errorf("%s /readyz after infra up = %d %q", name, code, body)
			}
			return nil
		})
	}

	prepared := sortie("demo", "prepare")
	m := regexp.MustCompile(`(?m)^SORTIE_SSH_KEY=(\S+)$`).FindStringSubmatch(prepared)
	if m == nil {
		t.Fatalf("demo prepare printed no SORTIE_SSH_KEY:\n%s", prepared)
	}
	key := "SORTIE_SSH_KEY=" + m[1]
	procs := map[string]*process{
		bus.Planner:      early[bus.Planner],
		bus.Provisioner:  early[bus.Provisioner],
		bus.Bootstrapper: startProcess(t, bus.Bootstrapper, svcEnv(s3Config, key), filepath.Join(bin, bus.Bootstrapper)),
		bus.Monitor:      startProcess(t, bus.Monitor, svcEnv("SORTIE_CONFIG=ssm:"+param, key), filepath.Join(bin, bus.Monitor)),
		bus.Reaper:       startProcess(t, bus.Reaper, svcEnv(s3Config, key), filepath.Join(bin, bus.Reaper)),
	}
	services := []string{bus.Planner, bus.Provisioner, bus.Bootstrapper, bus.Monitor, bus.Reaper}
	for _, name := range services {
		if urls[name] == "" {
			urls[name] = procs[name].endpoint(t)
		}
		cloudtest.Eventually(t, 60*time.Second, func() error {
			if code, body := readyz(t, urls[name]); code != http.StatusOK {
				return fmt.Errorf("%s /readyz = %d %q", name, code, body)
			}
			return nil
		})
	}
	// Idle memory: the target is 30 MiB a service; fail well above it, so a regression
	// (an emulator or a cache linked into a service) shows.
	const maxRSS = 40 << 10 // KiB
	for _, name := range services {
		if runtime.GOOS != "linux" {
			break // VmRSS comes from /proc
		}
		kb := vmRSS(t, procs[name].cmd.Process.Pid)
		ms, err := cloudtest.Scrape(t, urls[name])
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("idle RSS of %s: %.1f MiB (Go heap in use %.1f MiB, runtime total from the OS %.1f MiB)", name, float64(kb)/1024,
			ms.Value("go_memstats_heap_inuse_bytes")/(1<<20), ms.Value("go_memstats_sys_bytes")/(1<<20))
		if kb > maxRSS {
			t.Errorf("%s idles at %.1f MiB RSS, over %d MiB", name, float64(kb)/1024, maxRSS>>10)
		}
	}

	// The demo job, every service its own process: every stage's figures move.
	out := sortie("demo", "submit", "--watch", "--timeout", "90s")
	if !strings.Contains(out, "outcome:     succeeded") {
		t.Fatalf("demo job did not succeed:\n%s", out)
	}
	type want struct {
		metric string
		labels []string
		min    float64
	}
	wants := map[string][]want{
		bus.Planner: {{"sortie_messages_total", []string{"event_type", bus.JobSubmitted, "outcome", "handled"}, 1},
			{"sortie_fleets_planned_total", nil, 1}},
		bus.Provisioner: {{"sortie_messages_total", []string{"event_type", bus.FleetPlanned, "outcome", "handled"}, 1},
			{"sortie_instances_launched_total", []string{"instance_type", "m3.medium"}, 3}},
		bus.Bootstrapper: {{"sortie_messages_total", []string{"event_type", bus.FleetLaunched, "outcome", "handled"}, 1},
			{"sortie_bootstrap_step_duration_seconds", []string{"result", "ok"}, 9}},
		bus.Monitor: {{"sortie_messages_total", []string{"event_type", bus.FleetBootstrapped, "outcome", "handled"}, 1},
			{"sortie_messages_total", []string{"event_type", bus.TaskReported, "outcome", "handled"}, 202}},
		bus.Reaper: {{"sortie_messages_total", []string{"event_type", bus.JobFinished, "outcome", "handled"}, 1},
			{"sortie_archive_bytes_total", nil, 1}, {"sortie_instances_terminated_total", nil, 3}},
	}
	for _, name := range services {
		cloudtest.Eventually(t, 30*time.Second, func() error {
			ms, err := cloudtest.Scrape(t, urls[name])
			if err != nil {
				return err
			}
			var errs []error
			for _, w := range append(wants[name],
				want{"sortie_handler_duration_seconds", nil, 1},
				want{"sortie_message_age_at_receipt_seconds", nil, 1},
				want{"sortie_config_reloads_total", []string{"result", "applied"}, 1},
				want{"sortie_ready", []string{"service", name}, 1},
			) {
				if v := ms.Value(w.metric, w.labels...); v < w.min {
					errs = append(errs, fmt.Errorf("%s %s%v = %v, want >= %v", name, w.metric, w.labels, v, w.min))
				}
			}
			if _, ok := ms["sortie_oldest_message_age_seconds"]; !ok {
				errs = append(errs, fmt.Errorf("%s serves no sortie_oldest_message_age_seconds", name))
			}
			return errors.Join(errs...)
		})
	}

	// SIGHUP: the planner reads its config again (a changed one: applied).
	putConfig(bytes.Replace(ops, []byte("max_instances: 10"), []byte("max_instances: 9"), 1))
	planner := procs[bus.Planner]
	if err := planner.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	cloudtest.Eventually(t, 30*time.Second, func() error {
		if !strings.Contains(planner.out.String(), "ops config reloaded") {
			return errors.New("the planner did not reload its config on SIGHUP")
		}
		return nil
	})
	if code, _ := readyz(t, urls[bus.Planner]); code != http.StatusOK || planner.exited() {
		t.Errorf("the planner is not ready after SIGHUP (%d, exited %t)", code, planner.exited())
	}

	// SIGTERM while a bootstrap is in flight: not ready, still alive, until it is done.
	boot := procs[bus.Bootstrapper]
	sortie("submit", "--template", "demo", "--profile", "demo-fast", "--recipe", "hold", "--count", "1", "--deadline", "2m")
	cloudtest.Eventually(t, 60*time.Second, func() error {
		ms, err := cloudtest.Scrape(t, urls[bus.Bootstrapper])
		if err != nil {
			return err
		}
		if v := ms.Value("sortie_handlers_in_flight"); v != 1 {
			return fmt.Errorf("bootstrapper handlers in flight = %v, want 1 (the held bootstrap)", v)
		}
		return nil
	})
	if err := boot.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	cloudtest.Eventually(t, 30*time.Second, func() error {
		code, body := readyz(t, urls[bus.Bootstrapper])
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
			return fmt.Errorf("bootstrapper /readyz during the drain = %d %q, want 503 draining", code, body)
		}
		return nil
	})
	if code, body := cloudtest.Get(t, urls[bus.Bootstrapper]+"/healthz"); code != http.StatusOK {
		t.Errorf("bootstrapper /healthz during the drain = %d %q, want 200", code, body)
	}
	if boot.exited() {
		t.Fatal("the bootstrapper exited with a message in flight")
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-boot.done:
		boot.done <- err
		if err != nil {
			t.Errorf("bootstrapper exited with %v after draining, want 0", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the bootstrapper did not exit within 60 s of its message's release")
	}
	if !strings.Contains(boot.out.String(), "stopped: every message in flight was handled") {
		t.Errorf("the bootstrapper's log does not say it drained:\n%s", boot.out)
	}
}
