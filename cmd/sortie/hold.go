package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/fleetview"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// HoldCmd is `sortie hold JOB`: keep the job's instances once it ends, to look at them.
type HoldCmd struct {
	JobID  string        `arg:"" name:"job-id" help:"The job to hold."`
	For    time.Duration `help:"How long to keep the instances (from now); the stack caps it at SORTIE_MAX_HOLD and the template's TTL." default:"30m"`
	Reason string        `help:"Why (shown by status)."`
	By     string        `help:"Who holds it (shown by status)." env:"SORTIE_OPERATOR"`
}

// Run places the hold in the ledger.
func (c *HoldCmd) Run(ctx context.Context, g *Globals) error {
	if err := checkHold(c.For); err != nil {
		return err
	}
	l, err := stackLedger(ctx, g)
	if err != nil {
		return err
	}
	until := time.Now().Add(c.For)
	if err := l.PlaceHold(ctx, c.JobID, ledger.Hold{Until: until, By: operator(c.By), Reason: c.Reason}, false); err != nil {
		return err
	}
	rec, err := l.Get(ctx, c.JobID)
	if err != nil {
		return err
	}
	if at := rec.DoneAt(ledger.Finished); at != "" {
		// The monitor extended no lease: the job finished before the hold. Extend those of
		// the instances still running; the reaper keeps them unless it was reaping already.
		cfg, err := awsx.Load(ctx, "cli")
		if err != nil {
			return err
		}
		n, err := extendLeases(ctx, ec2.NewFromConfig(cfg), g.Prefix, c.JobID, until)
		if err != nil {
			return err
		}
		fmt.Fprintf(g.Stdout, "job %s finished at %s (%s): %d instances still running held until %s, unless the reaper was reaping them already\n",
			c.JobID, at, rec.Attrs["outcome"], n, until.UTC().Format(time.RFC3339))
		return nil
	}
	fmt.Fprintf(g.Stdout, "job %s held until %s: its instances are kept when it ends; `sortie release %s` lets them go\n",
		c.JobID, until.UTC().Format(time.RFC3339), c.JobID)
	return nil
}

// leaseTagger is the EC2 calls extendLeases makes.
type leaseTagger interface {
	fleetview.EC2API
	CreateTags(ctx context.Context, params *ec2.CreateTagsInput, optFns ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error)
}

// extendLeases sets the lease of the job's running instances in the stack to until and
// returns how many it extended.
func extendLeases(ctx context.Context, api leaseTagger, stack, jobID string, until time.Time) (int, error) {
	insts, err := fleetview.Describe(ctx, api, fleetview.Query{Stack: stack, JobID: jobID})
	if err != nil {
		return 0, err
	}
	var ids []string
	for _, in := range insts {
		if in.State != nil && in.State.Name == ec2types.InstanceStateNameRunning {
			ids = append(ids, aws.ToString(in.InstanceId))
		}
	}
	if len(ids) == 0 {
		return 0, nil
	}
	_, err = api.CreateTags(ctx, &ec2.CreateTagsInput{Resources: ids,
		Tags: []ec2types.Tag{{Key: aws.String(tags.LeaseExpires), Value: aws.String(until.UTC().Format(time.RFC3339))}}})
	if err != nil {
		return 0, fmt.Errorf("extending the leases of job %s: %w", jobID, err)
	}
	return len(ids), nil
}

// ReleaseCmd is `sortie release JOB`: end a hold now.
type ReleaseCmd struct {
	JobID string `arg:"" name:"job-id" help:"The held job."`
}

// Run releases the hold; the reaper reaps a finished job's fleet at its next check.
func (c *ReleaseCmd) Run(ctx context.Context, g *Globals) error {
	l, err := stackLedger(ctx, g)
	if err != nil {
		return err
	}
	h, err := l.ReleaseHold(ctx, c.JobID)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "job %s released (held by %s until %s): its fleet is reaped once the job ends\n",
		c.JobID, dash(h.By), h.Until.UTC().Format(time.RFC3339))
	return nil
}

// CancelCmd is `sortie cancel JOB`: end a job now with outcome cancelled.
type CancelCmd struct {
	JobID  string `arg:"" name:"job-id" help:"The job to cancel."`
	Reason string `help:"Why (carried in JobFinished and FleetTerminated)."`
	By     string `help:"Who cancels it." env:"SORTIE_OPERATOR"`
}

// Run records the cancel; the stages act on it: a job not launched yet is never
// launched, a running one is ended by the monitor's next check (logs archived, instances
// terminated, capacity released). A second cancel, or one of a job that has ended, says
// so and changes nothing.
func (c *CancelCmd) Run(ctx context.Context, g *Globals) error {
	l, err := stackLedger(ctx, g)
	if err != nil {
		return err
	}
	err = l.CancelJob(ctx, c.JobID, ledger.Cancel{By: operator(c.By), Reason: c.Reason})
	if errors.Is(err, ledger.ErrCancelled) || errors.Is(err, ledger.ErrEnded) {
		fmt.Fprintf(g.Stdout, "%v\n", err)
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "job %s cancelled: it ends with outcome cancelled (`sortie watch %s` follows it)\n", c.JobID, c.JobID)
	return nil
}

// stackLedger is the ledger of the stack --prefix names.
func stackLedger(ctx context.Context, g *Globals) (*ledger.Ledger, error) {
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return nil, err
	}
	topo := bus.Topology{Prefix: g.Prefix}
	if err := checkStack(ctx, s3.NewFromConfig(cfg, awsx.S3Options(cfg)), topo); err != nil {
		return nil, err
	}
	return ledger.ForStack(cfg, topo), nil
}

// checkHold refuses a hold longer than the stack allows (SORTIE_MAX_HOLD, as the
// services read it) or not positive.
func checkHold(d time.Duration) error {
	maxHold, err := service.DurationEnv("SORTIE_MAX_HOLD", service.DefaultMaxHold)
	if err != nil {
		return err
	}
	if d <= 0 || d > maxHold {
		return fmt.Errorf("hold of %s: want more than 0 and at most %s (SORTIE_MAX_HOLD)", d, maxHold)
	}
	return nil
}

// operator names who acts: --by, else the login name.
func operator(by string) string {
	if by != "" {
		return by
	}
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return "operator"
}
