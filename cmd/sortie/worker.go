package main

import (
	"context"
	"fmt"
	"os"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/worker"
)

// WorkerCmd is `sortie worker`: the demo workload that runs on the instances (installed
// there as `sortie-worker`). It reads its job's ids from $HOME/.sortie/job.env and its AWS
// access from the instance's environment.
type WorkerCmd struct {
	Bucket string `help:"Bucket holding the items' objects; results go there too." required:""`
	Queue  string `help:"Work queue name." required:""`
}

// Run processes items until the work queue is drained.
func (c *WorkerCmd) Run(ctx context.Context, g *Globals) error {
	home, err := os.UserHomeDir()
	if err != nil {
		return err
	}
	env, err := worker.LoadJobEnv(home)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	cfg, err := awsx.Load(ctx, "worker")
	if err != nil {
		return err
	}
	wc := worker.Config{Bucket: c.Bucket, Queue: c.Queue, AWS: cfg, Out: g.Stdout}
	env.Apply(&wc)
	return worker.Run(ctx, wc)
}
