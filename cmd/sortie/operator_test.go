package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/devstack"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/fleetview"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/sshaddr"
	"github.com/sortie-fleet/sortie/pkg/sshkey"
	"github.com/sortie-fleet/sortie/pkg/tags"
	"github.com/sortie-fleet/sortie/pkg/watch"
)

// TestOperatorDay runs hold, release, watch and cancel against a dev stack whose
// instances are real SSH hosts:
//   - a failing job submitted with --hold-on-failure: its instance stays running and
//     reachable over SSH past the failure, status shows it HELD, release reaps it (logs
//     archived, all terminated, capacity released), and watch on the finished job prints
//     its history and exits with its outcome;
//   - a running job followed by watch and cancelled mid-run: it ends cancelled (logs
//     archived, all terminated, capacity released), the watch ends with it, and a second
//     cancel says it was cancelled and changes nothing.
func TestOperatorDay(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts the whole stack")
	}
	const prefix = "cliops"
	// Caps, so that the fleets reserve capacity and its release can be seen.
	ops := opsconfig.Default()
	ops.Caps = opsconfig.Caps{MaxInstances: 20}
	st, demo := startDevStackWith(t, prefix, 3, ops)
	ctx := t.Context()
	w, err := watch.Open(ctx, st.SNS, st.SQS, st.Topology, "ops-test-"+randomHex(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	seen := &eventLog{w: w}

	t.Run("held on failure, reachable, released, reaped", func(t *testing.T) {
		jobID := "ops-held-" + randomHex(4)
		// A queue that does not exist: the worker fails at once.
		out, err := runCLI(t, "--prefix", prefix, "submit", "--job-id", jobID, "--template", "demo", "--profile", "demo-fast",
			"--recipe", "demo-worker", "--count", "2", "--param", "bucket="+demo.Bucket, "--param", "queue=no-such-queue-"+randomHex(3),
			"--deadline", "60s", "--hold-on-failure", "10m", "--by", "alice")
		if err != nil {
			t.Fatalf("submit: %v\n%s", err, out)
		}
		jf := seen.waitFor(t, jobID, events.TypeJobFinished, 90*time.Second).(events.JobFinished)
		if jf.Outcome != events.OutcomeFailed {
			t.Fatalf("job finished %s (%s), want failed", jf.Outcome, jf.Reason)
		}
		launched := seen.find(jobID, events.TypeFleetLaunched).(events.FleetLaunched)
		// The monitor extends the held instances' leases to the hold's end.
		var held []ec2types.Instance
		cloudtest.Eventually(t, 30*time.Second, func() error {
			insts, err := fleetview.Describe(ctx, st.EC2, fleetview.Query{Stack: prefix, JobID: jobID})
			if err != nil {
				return err
			}
			if len(insts) == 0 {
				return fmt.Errorf("no instance of %s", jobID)
			}
			for _, in := range insts {
				lease, _ := time.Parse(time.RFC3339, tagOf(in, tags.LeaseExpires))
				if in.State.Name != ec2types.InstanceStateNameRunning || time.Until(lease) < 9*time.Minute {
					return fmt.Errorf("instance %s is %s with lease %s: not held yet", aws.ToString(in.InstanceId), in.State.Name, lease)
				}
			}
			held = insts
			return nil
		})
		// Past the failure: the reaper has seen JobFinished and kept the fleet.
		cloudtest.Eventually(t, 30*time.Second, func() error {
			out, err := runCLI(t, "--prefix", prefix, "status", "--ledger", "--json", jobID)
			if err != nil {
				return fmt.Errorf("status: %v\n%s", err, out)
			}
			var jobs []ledger.Summary
			if err := json.Unmarshal([]byte(out), &jobs); err != nil || len(jobs) != 1 {
				return fmt.Errorf("status: %v\n%s", err, out)
			}
			j := jobs[0]
			if j.State != ledger.StateHeld || j.Hold == nil || j.Hold.By != "alice" || !j.Hold.OnFailure || j.Outcome != events.OutcomeFailed {
				return fmt.Errorf("status %+v hold %+v, want held by alice", j, j.Hold)
			}
			return nil
		})
		text, err := runCLI(t, "--prefix", prefix, "status", "--ledger", jobID)
		if err != nil || !strings.Contains(text, "HELD (by alice until") {
			t.Errorf("status --ledger: %v\n%s", err, text)
		}
		// Reachable over SSH with the pinned host key and the login key.
		signer, err := sshkey.Load(ctx, st.S3, st.SSHKey)
		if err != nil {
			t.Fatal(err)
		}
		hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(launched.HostKey))
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range held {
			addr, err := sshaddr.Mode{Local: true}.Of(in)
			if err != nil {
				t.Fatal(err)
			}
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			c, err := remote.Dial(dctx, remote.DialConfig{Addr: addr, User: "sortie", Signer: signer, HostKey: hostKey})
			if err != nil {
				cancel()
				t.Fatalf("ssh to the held instance %s: %v", aws.ToString(in.InstanceId), err)
			}
			res, err := c.Run(dctx, "cat .sortie/job.env", nil)
			c.Close()
			cancel()
			if err != nil || res.ExitCode != 0 || !strings.Contains(string(res.Stdout), jobID) {
				t.Errorf("on the held instance: %v exit %d\n%s%s", err, res.ExitCode, res.Stdout, res.Stderr)
			}
		}
		if seen.has(jobID, events.TypeFleetTerminated) {
			t.Fatal("FleetTerminated published for a held job")
		}
		if n, _, _, err := st.Ledger.InUse(ctx); err != nil || n != len(held) {
			t.Errorf("capacity in use while held: %d instances (%v), want the held fleet's %d", n, err, len(held))
		}

		out, err = runCLI(t, "--prefix", prefix, "release", jobID)
		if err != nil || !strings.Contains(out, "released") {
			t.Fatalf("release: %v\n%s", err, out)
		}
		ft := seen.waitFor(t, jobID, events.TypeFleetTerminated, 60*time.Second).(events.FleetTerminated)
		if ft.Outcome != events.OutcomeFailed || len(ft.Archives) != len(held) || len(ft.TerminatedInstanceIDs) != len(held) {
			t.Errorf("FleetTerminated %+v, want failed with %d archives and terminated instances", ft, len(held))
		}
		assertReaped(t, st, jobID)

		// watch on the finished job: its history, and its outcome as the exit status.
		out, err = runCLI(t, "--prefix", prefix, "watch", jobID)
		if err == nil || !strings.Contains(err.Error(), "failed") {
			t.Errorf("watch of a failed job returned %v, want its failure", err)
		}
		for _, want := range []string{"submitted", "planned", "launched", "bootstrapped", "finished     failed", "terminated   failed"} {
			if !strings.Contains(out, want) {
				t.Errorf("watch output lacks %q:\n%s", want, out)
			}
		}
		out, _ = runCLI(t, "--prefix", prefix, "watch", "--json", jobID)
		var stages []string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var h HistoryLine
			if err := json.Unmarshal([]byte(line), &h); err != nil || h.Type != "history" || h.JobID != jobID {
				t.Errorf("watch --json line %q: %v", line, err)
			}
			stages = append(stages, h.Stage)
		}
		if strings.Join(stages, " ") != "submitted planned launched bootstrapped watching finished terminated" {
			t.Errorf("watch --json stages %v", stages)
		}
		if out, err := runCLI(t, "--prefix", prefix, "hold", jobID); err == nil || !strings.Contains(err.Error(), "ended") {
			t.Errorf("hold of a terminated job: %v\n%s", err, out)
		}
	})

	t.Run("held before it ends, reaped at the hold's end", func(t *testing.T) {
		jobID := "ops-until-" + randomHex(4)
		out, err := runCLI(t, "--prefix", prefix, "submit", "--job-id", jobID, "--template", "demo", "--profile", "demo-fast",
			"--recipe", "demo-worker", "--count", "2", "--param", "bucket="+demo.Bucket, "--param", "queue=no-such-queue-"+randomHex(3),
			"--deadline", "60s")
		if err != nil {
			t.Fatalf("submit: %v\n%s", err, out)
		}
		// As soon as the ledger knows the job (the planner's first write).
		var placed time.Time
		cloudtest.Eventually(t, 30*time.Second, func() error {
			placed = time.Now()
			out, err := runCLI(t, "--prefix", prefix, "hold", jobID, "--for", "15s", "--reason", "look at it")
			if err != nil {
				return fmt.Errorf("hold: %v\n%s", err, out)
			}
			return nil
		})
		rec, err := st.Ledger.Get(ctx, jobID)
		if err != nil || rec.DoneAt(ledger.Finished) != "" {
			t.Fatalf("the hold was placed after the job finished (%v): the test proves nothing", err)
		}
		ft := seen.waitFor(t, jobID, events.TypeFleetTerminated, 90*time.Second).(events.FleetTerminated)
		if ft.Outcome != events.OutcomeFailed || len(ft.TerminatedInstanceIDs) == 0 || len(ft.Archives) != len(ft.TerminatedInstanceIDs) {
			t.Errorf("FleetTerminated %+v", ft)
		}
		if ft.Time.Before(placed.Add(15 * time.Second)) {
			t.Errorf("reaped at %s, before the hold's end %s", ft.Time, placed.Add(15*time.Second))
		}
		assertReaped(t, st, jobID)
	})

	t.Run("cancelled mid-run while watched", func(t *testing.T) {
		jobID := "ops-cancel-" + randomHex(4)
		// One item kept in flight by the test: the workers keep polling until it comes
		// back, so the job runs until cancelled.
		q, err := st.SQS.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String("ops-busy-" + randomHex(3))})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.SQS.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: q.QueueUrl, MessageBody: aws.String(`{"key":"x"}`)}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.SQS.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: q.QueueUrl, VisibilityTimeout: 600}); err != nil {
			t.Fatal(err)
		}
		name := aws.ToString(q.QueueUrl)[strings.LastIndex(aws.ToString(q.QueueUrl), "/")+1:]
		out, err := runCLI(t, "--prefix", prefix, "submit", "--job-id", jobID, "--template", "demo", "--profile", "demo-fast",
			"--recipe", "demo-worker", "--count", "2", "--param", "bucket="+demo.Bucket, "--param", "queue="+name, "--deadline", "120s")
		if err != nil {
			t.Fatalf("submit: %v\n%s", err, out)
		}
		seen.waitFor(t, jobID, events.TypeFleetBootstrapped, 90*time.Second)
		if n, _, _, err := st.Ledger.InUse(ctx); err != nil || n == 0 {
			t.Errorf("capacity in use while running: %d instances (%v), want the fleet's", n, err)
		}
		type result struct {
			out string
			err error
		}
		watched := make(chan result, 1)
		go func() {
			out, err := runCLI(t, "--prefix", prefix, "watch", jobID)
			watched <- result{out, err}
		}()
		out, err = runCLI(t, "--prefix", prefix, "cancel", jobID, "--reason", "wrong input", "--by", "bob")
		if err != nil || !strings.Contains(out, "cancelled") {
			t.Fatalf("cancel: %v\n%s", err, out)
		}
		ft := seen.waitFor(t, jobID, events.TypeFleetTerminated, 60*time.Second).(events.FleetTerminated)
		if ft.Outcome != events.OutcomeCancelled || ft.Reason != "cancelled by bob: wrong input" || len(ft.Archives) == 0 || len(ft.Archives) != len(ft.TerminatedInstanceIDs) {
			t.Errorf("FleetTerminated %+v, want cancelled with every instance archived and terminated", ft)
		}
		assertReaped(t, st, jobID)
		select {
		case r := <-watched:
			if r.err == nil || !strings.Contains(r.err.Error(), "cancelled") || !strings.Contains(r.out, "FleetTerminated    cancelled") {
				t.Errorf("watch ended with %v\n%s", r.err, r.out)
			}
		case <-time.After(60 * time.Second):
			t.Error("watch did not end with the job")
		}
		out, err = runCLI(t, "--prefix", prefix, "cancel", jobID)
		if err != nil || !strings.Contains(out, "already cancelled") {
			t.Errorf("second cancel: %v\n%s", err, out)
		}
		rec, err := st.Ledger.Get(ctx, jobID)
		if c, _ := rec.Cancelled(); err != nil || c.By != "bob" || rec.Attrs["outcome"] != events.OutcomeCancelled {
			t.Errorf("the second cancel changed the record: %+v %v", rec.Attrs, err)
		}
	})
}

// assertReaped checks that none of the job's instances runs and that the stack's
// capacity is free again.
func assertReaped(t *testing.T, st *devstack.Stack, jobID string) {
	t.Helper()
	insts, err := fleetview.Describe(t.Context(), st.EC2, fleetview.Query{Stack: st.Topology.Prefix, JobID: jobID, All: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range insts {
		if in.State.Name != ec2types.InstanceStateNameTerminated {
			t.Errorf("instance %s of %s is %s", aws.ToString(in.InstanceId), jobID, in.State.Name)
		}
	}
	n, v, _, err := st.Ledger.InUse(t.Context())
	if err != nil || n != 0 || v != 0 {
		t.Errorf("capacity in use after the reap: %d instances, %d vCPUs (%v)", n, v, err)
	}
}

func tagOf(in ec2types.Instance, key string) string {
	for _, tg := range in.Tags {
		if aws.ToString(tg.Key) == key {
			return aws.ToString(tg.Value)
		}
	}
	return ""
}

// eventLog keeps every event a watcher receives, for the test to wait on.
type eventLog struct {
	w   *watch.Watcher
	evs []events.Event
}

func (l *eventLog) find(jobID, typ string) events.Event {
	for _, ev := range l.evs {
		if id, _ := ev.IDs(); id == jobID && ev.EventType() == typ {
			return ev
		}
	}
	return nil
}

func (l *eventLog) has(jobID, typ string) bool {
	// Drain what has arrived without waiting long.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for {
		ev, err := l.w.Next(ctx)
		if err != nil {
			break
		}
		l.evs = append(l.evs, ev)
	}
	return l.find(jobID, typ) != nil
}

func (l *eventLog) waitFor(t *testing.T, jobID, typ string, within time.Duration) events.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), within)
	defer cancel()
	for {
		if ev := l.find(jobID, typ); ev != nil {
			return ev
		}
		ev, err := l.w.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("no %s of %s within %s", typ, jobID, within)
			}
			continue
		}
		l.evs = append(l.evs, ev)
	}
}
