package main

import (
	"context"
	"fmt"
	"os"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/worker"
)

// WorkerCmd is `sortie worker`: what runs on the instances (installed there as
// `sortie-worker`): the demo workload, and the start steps' exit report.
type WorkerCmd struct {
	Run    WorkerRunCmd    `cmd:"" default:"withargs" help:"Run the demo workload (the default)."`
	Exited WorkerExitedCmd `cmd:"" help:"Report that a start step's workload exited (run by the step's wrapper on the instance)."`
}

// WorkerRunCmd is `sortie worker [run]`: the demo workload. It reads its job's ids from
// $HOME/.sortie/job.env and its AWS access from the instance's environment.
type WorkerRunCmd struct {
	Bucket string `help:"Bucket holding the items' objects; results go there too." required:""`
	Queue  string `help:"Work queue name." required:""`
}

// Run processes items until the work queue is drained.
func (c *WorkerRunCmd) Run(ctx context.Context, g *Globals) error {
	env, err := jobEnv()
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

// WorkerExitedCmd is `sortie worker exited --step STEP --code N`: the wrapper of a start
// step reports its workload's exit at once, so that the monitor checks the fleet now
// rather than at its next round.
type WorkerExitedCmd struct {
	Step string `help:"The start step whose workload exited." required:""`
	Code int    `help:"Its exit status (0-255)." required:""`
}

// Run publishes the exit report on the TaskReported topic.
func (c *WorkerExitedCmd) Run(ctx context.Context, g *Globals) error {
	env, err := jobEnv()
	if err != nil {
		return err
	}
	cfg, err := awsx.Load(ctx, "worker")
	if err != nil {
		return err
	}
	return worker.PublishExit(ctx, cfg, env, c.Step, c.Code)
}

func jobEnv() (worker.JobEnv, error) {
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
