package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/recipe"
)

// syncBuffer is a writer the test reads while the command writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLogsFollow follows a running job's workload log: lines arrive, prefixed by the
// instance, while the workload still runs (it has no exit code yet); --tail 2 starts two
// lines back; the command ends by itself when the workload exits, having shown every line
// from there to the last, once and in order. Once the fleet is reaped, --follow prints
// the archive instead.
func TestLogsFollow(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts the whole stack")
	}
	const prefix = "clifollow"
	st, _ := startDevStackWith(t, prefix, 1, sleeperOps(t))
	t.Setenv("SORTIE_LOCAL_MODE", "1")
	jobID := "cli-follow-" + randomHex(4)
	const total = 50
	submitSleeper(t, prefix, jobID, strconv.Itoa(total))

	// Wait for the workload to have written a few lines.
	var instance string
	cloudtest.Eventually(t, 60*time.Second, func() error {
		out, err := runCLI(t, "--prefix", prefix, "ssh-config", "--json", jobID)
		if err != nil {
			return err
		}
		m := regexp.MustCompile(`"instance_id": "(i-[0-9a-f]+)"`).FindStringSubmatch(out)
		if m == nil {
			return fmt.Errorf("no instance in %s", out)
		}
		instance = m[1]
		b, err := os.ReadFile(filepath.Join(st.Cloud.InstanceDir(instance), "work.log"))
		if err != nil || strings.Count(string(b), "\n") < 5 {
			return fmt.Errorf("work.log not written yet (%v)", err)
		}
		return nil
	})
	exitCode := filepath.Join(st.Cloud.InstanceDir(instance), recipe.ExitCodePath("work"))

	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		done <- run(ctx, []string{"--prefix", prefix, "logs", "--follow", "--tail", "2", jobID}, &out, &out)
	}()
	prefixRE := regexp.MustCompile(`^\[` + instance + `\] line ([0-9]+)$`)
	cloudtest.Eventually(t, 30*time.Second, func() error {
		if !strings.Contains(out.String(), "["+instance+"] line ") {
			return fmt.Errorf("no line yet: %q", out.String())
		}
		return nil
	})
	if _, err := os.Stat(exitCode); err == nil {
		t.Errorf("the first lines arrived only after the workload exited: not live")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("logs --follow: %v\n%s", err, out.String())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("logs --follow did not end with the workload:\n%s", out.String())
	}
	if _, err := os.Stat(exitCode); err != nil {
		t.Errorf("logs --follow ended before the workload exited: %v", err)
	}
	var nums []int
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		m := prefixRE.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("unexpected line %q in:\n%s", l, out.String())
		}
		n, _ := strconv.Atoi(m[1])
		nums = append(nums, n)
	}
	if nums[0] < 4 {
		t.Errorf("first line shown is line %d: --tail 2 after at least 5 lines starts at 4 or later", nums[0])
	}
	for i := 1; i < len(nums); i++ {
		if nums[i] != nums[i-1]+1 {
			t.Fatalf("lines not consecutive: %v", nums)
		}
	}
	if nums[len(nums)-1] != total {
		t.Errorf("last line %d, want %d", nums[len(nums)-1], total)
	}

	// Reaped: --follow falls back to the archive.
	cloudtest.Eventually(t, 60*time.Second, func() error {
		got, err := runCLI(t, "--prefix", prefix, "logs", "--follow", "--tail", "3", jobID)
		if err != nil {
			return err
		}
		if !strings.Contains(got, "line 48\nline 49\nline 50\n") || strings.Contains(got, "line 47\n") {
			return fmt.Errorf("archive output %q", got)
		}
		return nil
	})
}

// TestLogsUnknownJob: a job id this stack never saw, and a stack that does not exist,
// each get one line saying what to check.
func TestLogsUnknownJob(t *testing.T) {
	useCloud(t)
	prefix := "clilogs" + randomHex(3)
	if out, err := runCLI(t, "--prefix", prefix, "infra", "up"); err != nil {
		t.Fatalf("infra up: %v\n%s", err, out)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"logs of an unknown job", []string{"--prefix", prefix, "logs", "no-such-job"}, "no job no-such-job in stack " + prefix + " (no instances, no log archives): check the job id"},
		{"follow an unknown job", []string{"--prefix", prefix, "logs", "--follow", "no-such-job"}, "no instance of job no-such-job in stack " + prefix + ": check the job id"},
		{"ssh to an unknown job", []string{"--prefix", prefix, "ssh", "no-such-job"}, "no instance of job no-such-job in stack " + prefix},
		{"status of an unknown job", []string{"--prefix", prefix, "status", "no-such-job"}, "no instance of job no-such-job in stack " + prefix + ": check the job id"},
		{"a stack that does not exist", []string{"--prefix", "nosuchstack", "logs", "some-job"}, `no Sortie stack "nosuchstack" at http://`},
		{"status of a stack that does not exist", []string{"--prefix", "nosuchstack", "status"}, `no Sortie stack "nosuchstack" at http://`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v\n%s\nwant an error with %q", err, out, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("not one line: %q", err)
			}
		})
	}
}

// TestMissingCredentialsAndEndpoint: no credentials, and an endpoint that does not
// answer, each get one line saying what to try.
func TestMissingCredentialsAndEndpoint(t *testing.T) {
	cloud := useCloud(t)
	_ = cloud
	t.Run("no credentials", func(t *testing.T) {
		t.Setenv("AWS_ACCESS_KEY_ID", "")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "")
		t.Setenv("AWS_PROFILE", "")
		t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
		out, err := runCLI(t, "status")
		if err == nil || !strings.HasPrefix(err.Error(), "no AWS credentials found: set AWS_PROFILE") {
			t.Fatalf("got %v\n%s", err, out)
		}
	})
	t.Run("endpoint down", func(t *testing.T) {
		t.Setenv("AWS_ENDPOINT_URL", "http://"+cloudtest.FreeAddr(t))
		t.Setenv("AWS_MAX_ATTEMPTS", "1")
		out, err := runCLI(t, "status")
		if err == nil || !strings.Contains(err.Error(), "cannot reach http://") || !strings.Contains(err.Error(), "sortie localcloud") {
			t.Fatalf("got %v\n%s", err, out)
		}
	})
}
