package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/fleetview"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/sshaccess"
)

// StatusCmd is `sortie status`: the stack's (--prefix) Sortie instances by job, from their
// EC2 tags.
type StatusCmd struct {
	JobID  string `arg:"" optional:"" name:"job-id" help:"Only this job."`
	All    bool   `help:"Include terminated instances."`
	JSON   bool   `name:"json" help:"Print the jobs as JSON."`
	Ledger bool   `help:"Show the jobs the ledger records, running and past (for as long as its TTL keeps them): plan, state, when each stage was done, tasks, instance-seconds, outcome."`
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
	if c.Ledger {
		return c.runLedger(ctx, g, dynamodb.NewFromConfig(cfg))
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

// runLedger prints the jobs of the stack's ledger (or the one named).
func (c *StatusCmd) runLedger(ctx context.Context, g *Globals, api ledger.ScanAPI) error {
	table := bus.Topology{Prefix: g.Prefix}.LedgerTableName()
	recs, err := ledger.List(ctx, api, table)
	if err != nil {
		return err
	}
	var jobs []ledger.Summary
	for _, r := range recs {
		if c.JobID == "" || r.JobID == c.JobID {
			jobs = append(jobs, r.Summarize())
		}
	}
	if c.JSON {
		b, err := json.MarshalIndent(jobs, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(g.Stdout, "%s\n", b)
		return err
	}
	if len(jobs) == 0 {
		_, err := fmt.Fprintf(g.Stdout, "no job in the ledger %s\n", table)
		return err
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tSTATE\tPLAN\tTASKS\tINSTANCE-S\tOUTCOME\tSTAGES")
	for _, j := range jobs {
		var stages []string
		for _, st := range append(slices.Clone(ledger.Stages), ledger.Rejected) {
			if at, ok := j.Stages[string(st)]; ok {
				if t, err := time.Parse(time.RFC3339Nano, at); err == nil {
					at = t.Local().Format("15:04:05.0")
				}
				stages = append(stages, string(st)+"="+at)
			}
		}
		outcome := j.Outcome
		if j.Reason != "" {
			outcome += ": " + j.Reason
		}
		if j.Waiting != "" {
			outcome = "waiting for " + j.Waiting
		}
		tasks := ""
		if j.Tasks != nil {
			tasks = fmt.Sprintf("%d ok/%d failed", j.Tasks["succeeded"], j.Tasks["failed"])
		}
		state := j.State
		if j.Hold != nil {
			if state == ledger.StateHeld {
				state = "HELD"
			}
			state += fmt.Sprintf(" (by %s until %s: %s)", dash(j.Hold.By), j.Hold.Until.Local().Format(time.RFC3339), dash(j.Hold.Reason))
		}
		if j.Cancelled != "" && j.State != ledger.StateHeld {
			outcome = strings.TrimSuffix(j.Cancelled+"; "+outcome, "; -")
		}
		plan := j.Plan
		if j.PlanRevision > 1 {
			plan = fmt.Sprintf("%s, %d plans", dash(plan), j.PlanRevision)
		}
		if len(j.Lost) > 0 {
			outcome = strings.TrimPrefix(outcome+"; lost "+strings.Join(j.Lost, "; "), "; ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.JobID, state, dash(plan), dash(tasks), dash(j.InstanceSeconds), dash(outcome), strings.Join(stages, " "))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
