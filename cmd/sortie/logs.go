package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/fleetview"
	"github.com/sortie-fleet/sortie/pkg/livelogs"
	"github.com/sortie-fleet/sortie/pkg/sshaccess"
	"github.com/sortie-fleet/sortie/pkg/sshkey"
)

// LogsCmd is `sortie logs`: print a finished job's logs from the archives the reaper
// stored, or with --follow stream a running job's workload logs live over SSH.
type LogsCmd struct {
	JobID       string        `arg:"" name:"job-id" help:"The job whose logs to print."`
	Instance    string        `help:"Only this instance." placeholder:"ID"`
	File        string        `help:"Archived logs: print the files whose name (base name, path, or path below .sortie/) matches this glob (default: every *.log and stderr)." placeholder:"PATTERN"`
	Tail        int           `help:"Print only the last N lines of each file (with --follow: of each log, before following it)." placeholder:"N"`
	Follow      bool          `short:"f" help:"Stream the workload's log from every running instance over SSH, each line prefixed by its instance, until every workload has exited; an instance lost meanwhile is finished from its archive. A job whose instances are gone prints its archives."`
	ArchiveWait time.Duration `help:"With --follow: how long to wait for a lost instance's archive." default:"2m"`
	loginFlags
}

// Run prints the job's logs.
func (c *LogsCmd) Run(ctx context.Context, g *Globals) error {
	topo := bus.Topology{Prefix: g.Prefix}
	if err := topo.Validate(); err != nil {
		return err
	}
	if err := fleetview.CheckJobID(c.JobID); err != nil {
		return err
	}
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	s3c := s3.NewFromConfig(cfg, awsx.S3Options(cfg))
	if err := checkStack(ctx, s3c, topo); err != nil {
		return err
	}
	ec2c := ec2.NewFromConfig(cfg)
	if c.Follow {
		if c.File != "" {
			return errors.New("--file selects archived files: it does not go with --follow (which follows each workload's log)")
		}
		err := c.follow(ctx, g, topo, s3c, ec2c)
		var none *sshaccess.NoInstancesError
		if !errors.As(err, &none) || none.Ended == 0 {
			return err
		}
		// Every instance is gone: the archives hold the logs.
	}
	err = fleetview.PrintLogs(ctx, s3c, g.Stdout, fleetview.LogsRequest{
		Bucket: topo.BucketName(), JobID: c.JobID, InstanceID: c.Instance, Pattern: c.File, Tail: c.Tail,
	})
	var noArchives *fleetview.NoArchivesError
	if errors.As(err, &noArchives) && noArchives.InstanceID == "" {
		return c.whyNoArchives(ctx, ec2c, g.Prefix, err)
	}
	return err
}

// whyNoArchives says why a job has no archives: it is still running, or there is no
// such job in this stack.
func (c *LogsCmd) whyNoArchives(ctx context.Context, api fleetview.EC2API, stack string, err error) error {
	insts, derr := fleetview.Describe(ctx, api, fleetview.Query{Stack: stack, JobID: c.JobID, All: true})
	if derr != nil {
		return err
	}
	if len(insts) == 0 {
		return fmt.Errorf("no job %s in stack %s (no instances, no log archives): check the job id (`sortie status --all` lists the stack's jobs) and --prefix", c.JobID, stack)
	}
	for _, in := range insts {
		if in.State != nil && string(in.State.Name) != "terminated" {
			return fmt.Errorf("job %s is still running: its logs are archived when it ends; follow them live with `sortie logs --follow %s`", c.JobID, c.JobID)
		}
	}
	return err
}

// follow streams the running instances' logs; a *sshaccess.NoInstancesError says there
// are none.
func (c *LogsCmd) follow(ctx context.Context, g *Globals, topo bus.Topology, s3c *s3.Client, ec2c *ec2.Client) error {
	ops, err := c.ops()
	if err != nil {
		return err
	}
	ts, err := sshaccess.Resolve(ctx, ec2c, sshaccess.Query{Stack: g.Prefix, JobID: c.JobID, Local: c.Local, Ops: ops})
	if err != nil {
		return err
	}
	if c.Instance != "" {
		t, err := sshaccess.Pick(ts, c.Instance)
		if err != nil {
			return err
		}
		ts = []sshaccess.Target{t}
	}
	source, err := c.keySource(topo, ops)
	if err != nil {
		return err
	}
	signer, err := sshkey.Load(ctx, s3c, source)
	if err != nil {
		return err
	}
	instances := make([]livelogs.Instance, len(ts))
	for i, t := range ts {
		instances[i] = livelogs.Instance{ID: t.InstanceID, Addr: t.Addr, User: t.User, HostKey: t.HostKey}
	}
	archive := func(ctx context.Context, id, file string, from int, w io.Writer) error {
		deadline := time.Now().Add(c.ArchiveWait)
		for {
			err := fleetview.PrintArchivedLog(ctx, s3c, w, topo.BucketName(), c.JobID, id, file, from)
			var none *fleetview.NoArchivesError
			if !errors.As(err, &none) {
				return err
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("no archive of %s after %s: is the reaper running? try `sortie logs --instance %s %s` later", id, c.ArchiveWait, id, c.JobID)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	return livelogs.Follow(ctx, livelogs.Config{Signer: signer, Tail: c.Tail, Out: g.Stdout, Archive: archive}, instances)
}
