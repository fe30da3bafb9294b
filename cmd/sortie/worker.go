package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/worker"
)

// WorkerCmd is `sortie worker`: what runs on the instances (installed there as
// `sortie-worker`). Every subcommand reads the job's ids from $HOME/.sortie/job.env and
// its AWS access from the instance's environment.
type WorkerCmd struct {
	Run    WorkerRunCmd    `cmd:"" default:"withargs" help:"Run the demo workload: drain the work queue (the default)."`
	Report WorkerReportCmd `cmd:"" help:"Report one task's result as a TaskReported (for any workload: shell scripts, the Ansible callback)."`
	Exited WorkerExitedCmd `cmd:"" help:"Report that a start step's workload exited (run by the step's wrapper on the instance)."`
}

// WorkerRunCmd is `sortie worker [run]`: the demo workload.
type WorkerRunCmd struct {
	Bucket string `help:"Bucket holding the items' objects; results go there too." required:""`
	Queue  string `help:"Work queue name." required:""`
}

// Run processes items until the work queue is drained.
func (c *WorkerRunCmd) Run(ctx context.Context, g *Globals) error {
	env, err := loadJobEnv()
	if err != nil {
		return err
	}
	cfg, err := awsx.Load(ctx, "worker")
	if err != nil {
		return err
	}
	wc := worker.Config{Bucket: c.Bucket, Queue: c.Queue, AWS: cfg, Out: g.Stdout}
	env.Apply(&wc)
	return worker.Run(ctx, wc)
}

// WorkerReportCmd is `sortie worker report`: one task's result.
type WorkerReportCmd struct {
	Task     string        `help:"The task's name (printable, at most 256 bytes)." required:""`
	Status   string        `help:"How the task ended (events.OutcomeSucceeded or events.OutcomeFailed)." enum:"succeeded,failed" required:""`
	Duration time.Duration `help:"How long the task took (e.g. 1.5s)." default:"0s"`
	Detail   string        `help:"Why it failed, or a note."`
}

// Run publishes the report.
func (c *WorkerReportCmd) Run(ctx context.Context, g *Globals) error {
	env, err := loadJobEnv()
	if err != nil {
		return err
	}
	r := worker.Report{Task: c.Task, Outcome: c.Status, Duration: c.Duration, Detail: c.Detail}
	if _, err := r.TaskReported(env, time.Now()); err != nil {
		return err // before touching AWS: nothing is published
	}
	cfg, err := awsx.Load(ctx, "worker")
	if err != nil {
		return err
	}
	return worker.Publish(ctx, cfg, env, r)
}

// WorkerExitedCmd is `sortie worker exited --step STEP --code N`: the wrapper of a start
// step reports its workload's exit at once, so that the monitor checks the fleet now
// rather than at its next round.
type WorkerExitedCmd struct {
	Step string `help:"The start step whose workload exited." required:""`
	Code int    `help:"Its exit status (0-255)." required:""`
}

// Run publishes the exit report on the TaskReported topic.
func (c *WorkerExitedCmd) Run(ctx context.Context, g *Globals) error {
	env, err := loadJobEnv()
	if err != nil {
		return err
	}
	cfg, err := awsx.Load(ctx, "worker")
	if err != nil {
		return err
	}
	return worker.PublishExit(ctx, cfg, env, c.Step, c.Code)
}

func loadJobEnv() (worker.JobEnv, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return worker.JobEnv{}, err
	}
	env, err := worker.LoadJobEnv(home)
	if err != nil {
		return worker.JobEnv{}, fmt.Errorf("worker: %w", err)
	}
	return env, nil
}
