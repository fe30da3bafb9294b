package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/fleetview"
)

// section is one file printed by `sortie logs`.
type section struct {
	header string
	lines  []string
}

// sections splits `sortie logs` output at its `==> … <==` headers.
func sections(t *testing.T, out string) []section {
	t.Helper()
	var ss []section
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if strings.HasPrefix(l, "==> ") && strings.HasSuffix(l, " <==") {
			ss = append(ss, section{header: l})
			continue
		}
		if len(ss) == 0 {
			t.Fatalf("output does not start with a header:\n%s", out)
		}
		ss[len(ss)-1].lines = append(ss[len(ss)-1].lines, l)
	}
	for i := range len(ss) - 1 { // the blank line between files is not the file's
		if n := len(ss[i].lines); n > 0 && ss[i].lines[n-1] == "" {
			ss[i].lines = ss[i].lines[:n-1]
		}
	}
	return ss
}

// TestStatusAndLogsOnDevStack runs a small demo job to its end on a dev stack whose
// services run in this process, watching `sortie status` while it runs; then reads its
// logs back with `sortie logs`.
func TestStatusAndLogsOnDevStack(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts the whole stack")
	}
	const prefix = "clilogs"
	st, demo := startDevStack(t, prefix, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	jobID := "cli-logs-" + randomHex(4)

	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		var out, errOut strings.Builder
		err := run(ctx, []string{"--prefix", prefix, "submit", "--job-id", jobID,
			"--template", "demo", "--profile", "demo-fast", "--recipe", "demo-worker", "--queue", demo.Queue,
			"--param", "bucket=" + demo.Bucket, "--param", "queue=" + demo.Queue, "--deadline", "20s", "--watch", "--timeout", "90s"},
			&out, &errOut)
		done <- result{out.String() + errOut.String(), err}
	}()

	// While the job runs, `status` shows its instance running with its ssh endpoint.
	var running *fleetview.Job
	var res result
wait:
	for {
		select {
		case res = <-done:
			break wait
		case <-time.After(100 * time.Millisecond):
		}
		if running != nil {
			continue
		}
		for _, j := range statusJSON(t, "--prefix", prefix, jobID) {
			if j.States["running"] > 0 && len(j.Instances) > 0 && j.Instances[0].SSHEndpoint != "" {
				running = &j
			}
		}
	}
	if res.err != nil {
		t.Fatalf("submit --watch: %v\n%s\nservices: %v", res.err, res.out, st.Err())
	}
	if running == nil {
		t.Fatal("status never showed the job's instance running")
	}
	if running.JobID != jobID || running.Fleet != jobID || running.Expired || running.LeaseExpires == nil {
		t.Errorf("job while running = %+v: want its fleet, a live lease, not expired", *running)
	}

	t.Run("status after the job", func(t *testing.T) {
		out, err := runCLI(t, "--prefix", prefix, "status", jobID)
		if err != nil || strings.TrimSpace(out) != "no Sortie instances" {
			t.Errorf("status %s = %q, %v; want no instances", jobID, out, err)
		}
		jobs := statusJSON(t, "--prefix", prefix, "--all", jobID)
		if len(jobs) != 1 || len(jobs[0].Instances) == 0 || jobs[0].States["terminated"] != len(jobs[0].Instances) || jobs[0].Expired {
			t.Fatalf("status --all %s = %+v: want every instance terminated", jobID, jobs)
		}
		if jobs[0].Stage != "finished" {
			t.Errorf("stage = %q, want finished", jobs[0].Stage)
		}
		out, err = runCLI(t, "--prefix", prefix, "status", "--all", jobID)
		if err != nil || !strings.Contains(out, jobID) || !strings.Contains(out, "terminated") {
			t.Errorf("status --all %s table = %q, %v", jobID, out, err)
		}
	})

	instance := running.Instances[0].ID
	t.Run("logs", func(t *testing.T) {
		out, err := runCLI(t, "--prefix", prefix, "logs", jobID)
		if err != nil {
			t.Fatalf("logs: %v\n%s", err, out)
		}
		files := 0
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "input/file-") {
				files++
			}
		}
		if files != 10 {
			t.Errorf("%d lines name input/file-, want 10:\n%s", files, out)
		}
		ss := sections(t, out)
		for _, s := range ss {
			if !strings.HasPrefix(s.header, "==> "+instance+"/.sortie/") ||
				!(strings.HasSuffix(s.header, ".log <==") || strings.HasSuffix(s.header, "/stderr <==")) {
				t.Errorf("unexpected file %s", s.header)
			}
		}

		tail, err := runCLI(t, "--prefix", prefix, "logs", jobID, "--tail", "2")
		if err != nil {
			t.Fatalf("logs --tail 2: %v\n%s", err, tail)
		}
		ts := sections(t, tail)
		if len(ts) != len(ss) {
			t.Fatalf("--tail printed %d files, want %d", len(ts), len(ss))
		}
		for i, s := range ts {
			full := ss[i].lines
			want := full[max(0, len(full)-2):]
			if s.header != ss[i].header || strings.Join(s.lines, "\n") != strings.Join(want, "\n") {
				t.Errorf("--tail 2 of %s = %q, want %q", s.header, s.lines, want)
			}
		}
	})

	t.Run("logs of one instance", func(t *testing.T) {
		out, err := runCLI(t, "--prefix", prefix, "logs", jobID, "--instance", instance, "--file", "exit_code")
		if err != nil {
			t.Fatalf("logs --instance: %v\n%s", err, out)
		}
		ss := sections(t, out)
		if len(ss) == 0 {
			t.Fatalf("no exit_code file:\n%s", out)
		}
		for _, s := range ss {
			if !strings.HasPrefix(s.header, "==> "+instance+"/") || !strings.HasSuffix(s.header, "/exit_code <==") ||
				strings.Join(s.lines, "\n") != "0" {
				t.Errorf("%s: %q, want exit code 0", s.header, s.lines)
			}
		}
		_, err = runCLI(t, "--prefix", prefix, "logs", jobID, "--instance", "i-nope")
		if err == nil || !strings.Contains(err.Error(), "no log archive for instance i-nope") || !strings.Contains(err.Error(), instance) {
			t.Errorf("unknown instance: got %v", err)
		}
	})

	t.Run("logs of an unknown job", func(t *testing.T) {
		_, err := runCLI(t, "--prefix", prefix, "logs", "no-such-job")
		want := "no job no-such-job in stack " + prefix + " (no instances, no log archives): check the job id (`sortie status --all` lists the stack's jobs) and --prefix"
		if err == nil || err.Error() != want {
			t.Errorf("got %v, want %q", err, want)
		}
	})
}
