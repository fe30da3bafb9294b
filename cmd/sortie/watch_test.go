package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/devstack"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/watch"
)

// The test binary doubles as `sortie worker` on the dev stack's instances.
const testWorkerEnv = "SORTIE_CMD_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(testWorkerEnv) == "1" {
		err := run(context.Background(), append([]string{"worker"}, os.Args[1:]...), os.Stdout, os.Stderr)
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startDevStack starts a dev stack whose instances run this test binary as the demo
// worker, seeds files demo files, and points the AWS SDK's environment (so `sortie`'s
// commands) at it. The stack closes when the test ends.
func startDevStack(t *testing.T, prefix string, files int) (*devstack.Stack, devstack.Demo) {
	t.Helper()
	return startDevStackWith(t, prefix, files, nil)
}

// startDevStackWith is startDevStack with an ops configuration of the test's own (nil: the
// embedded one).
func startDevStackWith(t *testing.T, prefix string, files int, ops *opsconfig.Config) (*devstack.Stack, devstack.Demo) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := devstack.Start(ctx, devstack.Options{Prefix: prefix, Ops: ops, WorkerCommand: []string{"/usr/bin/env", testWorkerEnv + "=1", exe}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("closing the dev stack: %v", err)
		}
	})
	demo, err := st.SeedDemo(ctx, files)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_ENDPOINT_URL", st.Cloud.URL())
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	return st, demo
}

// TestSubmitWatch runs `sortie submit --watch` against a dev stack whose services run in
// this process: a good job is followed to its terminated fleet; a job the planner rejects
// ends the watch at once with the DLQ's reason instead of waiting for the timeout.
func TestSubmitWatch(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts the whole stack")
	}
	const prefix = "cliwatch"
	st, demo := startDevStack(t, prefix, 30)

	// Unique per run: kumo's state (CloudWatch totals by job id) outlives a run repeated
	// in one process (-count).
	okID, badID := "cli-watch-ok-"+randomHex(4), "cli-watch-bad-"+randomHex(4)

	t.Run("followed to the end", func(t *testing.T) {
		out, err := runCLI(t, "--prefix", prefix, "submit", "--job-id", okID,
			"--template", "demo", "--profile", "demo-fast", "--recipe", "demo-worker", "--queue", demo.Queue,
			"--param", "bucket="+demo.Bucket, "--param", "queue="+demo.Queue, "--deadline", "20s", "--watch", "--timeout", "90s")
		if err != nil {
			t.Fatalf("submit --watch: %v\n%s\nservices: %v", err, out, st.Err())
		}
		for _, want := range []string{"submitted job " + okID, "FleetPlanned", "FleetLaunched", "JobFinished        succeeded: 30 tasks succeeded",
			"FleetTerminated    succeeded"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("rejected job ends the watch with the reason", func(t *testing.T) {
		start := time.Now()
		out, err := runCLI(t, "--prefix", prefix, "submit", "--job-id", badID,
			"--template", "no-such-template", "--profile", "demo-fast", "--recipe", "demo-worker", "--count", "3",
			"--param", "bucket="+demo.Bucket, "--param", "queue="+demo.Queue, "--watch", "--timeout", "60s")
		var rej *watch.RejectedError
		if !errors.As(err, &rej) {
			t.Fatalf("want a RejectedError, got %v\n%s", err, out)
		}
		// Either answer may come first: the DLQ's message, or the planner's rejected FleetTerminated.
		if rej.JobID != badID || !strings.Contains(rej.Reason, `unknown template "no-such-template"`) ||
			(rej.Queue == "" && rej.RejectedBy != "planner") || (rej.Queue != "" && !strings.HasSuffix(rej.Queue, "-dlq")) {
			t.Errorf("rejection = %+v", rej)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("rejection took %v to notice", d)
		}
	})

	t.Run("a reused job id is answered at once with the earlier job's outcome", func(t *testing.T) {
		start := time.Now()
		out, err := runCLI(t, "--prefix", prefix, "submit", "--job-id", okID,
			"--template", "demo", "--profile", "demo-fast", "--recipe", "demo-worker", "--count", "3",
			"--param", "bucket="+demo.Bucket, "--param", "queue="+demo.Queue, "--watch", "--timeout", "60s")
		var rej *watch.RejectedError
		if !errors.As(err, &rej) {
			t.Fatalf("want a RejectedError, got %v\n%s", err, out)
		}
		if rej.JobID != okID || rej.RejectedBy != "planner" || !strings.Contains(rej.Reason, "reused") || !strings.Contains(rej.Reason, "ended succeeded") {
			t.Errorf("rejection = %+v, want the planner naming the earlier job's success", rej)
		}
		if !strings.Contains(out, "FleetTerminated    rejected by planner") {
			t.Errorf("output lacks the rejection:\n%s", out)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("the answer took %v", d)
		}
	})

	t.Run("status --ledger shows both jobs, ended", func(t *testing.T) {
		// The ledger is written just after each event is published: poll.
		cloudtest.Eventually(t, 10*time.Second, func() error {
			out, err := runCLI(t, "--prefix", prefix, "status", "--ledger", "--json")
			if err != nil {
				return fmt.Errorf("status --ledger: %v\n%s", err, out)
			}
			var jobs []ledger.Summary
			if err := json.Unmarshal([]byte(out), &jobs); err != nil {
				return fmt.Errorf("%v\n%s", err, out)
			}
			byID := map[string]ledger.Summary{}
			for _, j := range jobs {
				byID[j.JobID] = j
			}
			ok, bad := byID[okID], byID[badID]
			if ok.State != "terminated" || ok.Outcome != "succeeded" || ok.Plan == "" || ok.InstanceSeconds == "" || ok.Tasks["succeeded"] != 30 || len(ok.Stages) != len(ledger.Stages) {
				return fmt.Errorf("the job that ran: %+v", ok)
			}
			if bad.State != "rejected" || !strings.Contains(bad.Reason, "no-such-template") {
				return fmt.Errorf("the rejected job: %+v", bad)
			}
			return nil
		})
		text, err := runCLI(t, "--prefix", prefix, "status", "--ledger", okID)
		if err != nil || !strings.Contains(text, okID) || !strings.Contains(text, "terminated") || strings.Contains(text, badID) {
			t.Errorf("status --ledger %s: %v\n%s", okID, err, text)
		}
	})

	t.Run("dlq list shows the rejected job's message with its reason; redrive moves it back", func(t *testing.T) {
		var bad DeadLetter
		cloudtest.Eventually(t, 10*time.Second, func() error {
			out, err := runCLI(t, "--prefix", prefix, "dlq", "list", "--json")
			if err != nil {
				return fmt.Errorf("dlq list: %v\n%s", err, out)
			}
			var all []DeadLetter
			if err := json.Unmarshal([]byte(out), &all); err != nil {
				return fmt.Errorf("%v\n%s", err, out)
			}
			for _, d := range all {
				if d.JobID == badID {
					bad = d
					return nil
				}
			}
			return fmt.Errorf("no dead letter of %s in %s", badID, out)
		})
		if !strings.Contains(bad.Reason, `unknown template "no-such-template"`) || bad.DLQ != prefix+"-planner-job-submitted-dlq" || bad.ID == "" || bad.EventType != "JobSubmitted" {
			t.Errorf("dead letter %+v", bad)
		}
		out, err := runCLI(t, "--prefix", prefix, "dlq", "redrive", prefix+"-planner-job-submitted", "--id", bad.ID)
		if err != nil || !strings.Contains(out, "moved 1 messages") {
			t.Fatalf("redrive: %v\n%s", err, out)
		}
		// Still invalid: the planner dead-letters it again, with its reason.
		cloudtest.Eventually(t, 30*time.Second, func() error {
			out, err := runCLI(t, "--prefix", prefix, "dlq", "list")
			if err != nil || !strings.Contains(out, badID) || !strings.Contains(out, "no-such-template") {
				return fmt.Errorf("not back in the DLQ yet: %v\n%s", err, out)
			}
			return nil
		})
	})
}
