package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/sortie-fleet/sortie/pkg/devstack"
	"github.com/sortie-fleet/sortie/pkg/events"
)

// DevCmd is `sortie dev`: the whole of Sortie in one process on the local cloud, running
// the demo job from message to terminated fleet.
type DevCmd struct {
	Addr    string        `help:"Local cloud listen address (127.0.0.1:0 picks a free port)." default:"127.0.0.1:4566"`
	Files   int           `help:"Demo files to process." default:"202"`
	Timeout time.Duration `help:"Give up on the demo job after this long." default:"3m"`
	Verbose bool          `help:"Print the services' JSON logs to stderr."`
	Keep    bool          `help:"Keep the stack running after the demo, until interrupted (the local cloud stays usable with AWS_ENDPOINT_URL)."`
	SSH     string        `help:"The instances' SSH server: embedded, or openssh (Debian's sshd; templates then log in as the current user)." enum:"embedded,openssh" default:"embedded"`
}

// Run starts the stack, runs the demo job and prints its progress and summary. It fails
// when the job does not succeed.
func (c *DevCmd) Run(ctx context.Context, g *Globals) error {
	started := time.Now()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logger := slog.New(slog.DiscardHandler)
	if c.Verbose {
		logger = slog.New(slog.NewJSONHandler(g.Stderr, nil))
	}
	fmt.Fprintf(g.Stdout, "starting the local cloud, infra and the five services…\n")
	stack, err := devstack.Start(ctx, devstack.Options{
		Addr: c.Addr, Prefix: g.Prefix, WorkerCommand: []string{exe, "worker"}, Logger: logger, SSH: c.SSH,
	})
	if err != nil {
		return err
	}
	defer stack.Close()
	fmt.Fprintf(g.Stdout, "local cloud on %s (AWS_ENDPOINT_URL), stack %q\n", stack.Cloud.URL(), g.Prefix)
	for _, e := range stack.Endpoints {
		fmt.Fprintf(g.Stdout, "  %-12s %s/healthz %s/readyz %s/metrics\n", e.Service, e.URL, e.URL, e.URL)
	}

	w, err := stack.Watch(ctx)
	if err != nil {
		return err
	}
	defer w.Close(context.WithoutCancel(ctx))
	demo, err := stack.SeedDemo(ctx, c.Files)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "seeded %d files in s3://%s/input/ and %d work items in queue %s\n", len(demo.Keys), demo.Bucket, len(demo.Keys), demo.Queue)

	now := time.Now()
	job := devstack.DemoJob(demo, "demo-"+now.UTC().Format("20060102-150405"), "corr-"+randomHex(8), now)
	if err := stack.Publisher.Publish(ctx, job); err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "submitted job %s\n\n", job.JobID)

	fctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	trace, err := devstack.Follow(fctx, w, job.JobID, g.Stdout)
	if err != nil {
		if serr := stack.Err(); serr != nil {
			err = fmt.Errorf("%w (services: %v)", err, serr)
		}
		return err
	}
	if err := stack.PrintSummary(ctx, g.Stdout, trace, now); err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "demo wall time: %.1fs\n", time.Since(started).Seconds())
	if c.Keep {
		fmt.Fprintf(g.Stdout, "stack kept running on %s; interrupt to stop\n", stack.Cloud.URL())
		<-ctx.Done()
	}
	if trace.Terminated.Outcome != events.OutcomeSucceeded {
		return fmt.Errorf("demo job %s %s", job.JobID, trace.Terminated.Outcome)
	}
	return nil
}
