package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/fleetview"
	"github.com/sortie-fleet/sortie/pkg/sshaccess"
)

// StatusCmd is `sortie status`: the stack's (--prefix) Sortie instances by job, from their
// EC2 tags.
type StatusCmd struct {
	JobID string `arg:"" optional:"" name:"job-id" help:"Only this job."`
	All   bool   `help:"Include terminated instances."`
	JSON  bool   `name:"json" help:"Print the jobs as JSON."`
}

// Run lists the instances tagged sortie:stack = the prefix and sortie:job-id, grouped by job, flagging leases that have
// expired on instances still running (leaks the reaper's sweep should take).
func (c *StatusCmd) Run(ctx context.Context, g *Globals) error {
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	if err := checkStack(ctx, s3.NewFromConfig(cfg, awsx.S3Options(cfg)), bus.Topology{Prefix: g.Prefix}); err != nil {
		return err
	}
	insts, err := fleetview.Describe(ctx, ec2.NewFromConfig(cfg), fleetview.Query{Stack: g.Prefix, JobID: c.JobID, All: c.All})
	if err != nil {
		return err
	}
	now := time.Now()
	jobs := fleetview.Group(insts, now)
	if c.JSON {
		b, err := json.MarshalIndent(jobs, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(g.Stdout, "%s\n", b)
		return err
	}
	if len(jobs) == 0 && c.JobID != "" && !c.All {
		// Terminated instances are left out: say so if the job has only those.
		all, err := fleetview.Describe(ctx, ec2.NewFromConfig(cfg), fleetview.Query{Stack: g.Prefix, JobID: c.JobID, All: true})
		if err != nil {
			return err
		}
		if len(all) == 0 {
			return &sshaccess.NoInstancesError{JobID: c.JobID, Stack: g.Prefix}
		}
	}
	if len(jobs) == 0 && c.JobID != "" && c.All {
		return &sshaccess.NoInstancesError{JobID: c.JobID, Stack: g.Prefix}
	}
	if len(jobs) == 0 {
		_, err := fmt.Fprintln(g.Stdout, "no Sortie instances")
		return err
	}
	return fleetview.WriteTable(g.Stdout, jobs, now)
}
