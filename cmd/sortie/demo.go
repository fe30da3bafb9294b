package main

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/devstack"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/watch"
)

// DemoCmd groups demo prepare and submit: the demo `sortie dev` runs, for services started
// separately (`task up`).
type DemoCmd struct {
	Prepare DemoPrepareCmd `cmd:"" help:"Create the templates' login key pair (private key kept in s3://<prefix>-secrets, SSE-KMS) and seed the demo's files and work items; prints the services' SORTIE_SSH_KEY."`
	Submit  DemoSubmitCmd  `cmd:"" help:"Submit the demo job; --watch follows it to the end and prints the summary."`
}

// DemoPrepareCmd is `sortie demo prepare`.
type DemoPrepareCmd struct {
	Files  int    `help:"Demo files to seed." default:"202"`
	Config string `help:"Ops config whose templates name the key pair: a YAML file, s3://bucket/key or ssm:/parameter/name (default: the embedded one)." env:"SORTIE_CONFIG"`
}

// Run creates the login key and seeds the demo. It can run again: the key pair is kept
// and the work queue reseeded.
func (c *DemoPrepareCmd) Run(ctx context.Context, g *Globals) error {
	base := service.Base{Prefix: g.Prefix, OpsConfig: c.Config}
	if err := base.Validate(); err != nil {
		return err
	}
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	ops, err := base.LoadOps(ctx, cfg)
	if err != nil {
		return fmt.Errorf("loading ops config: %w", err)
	}
	s3c := s3.NewFromConfig(cfg, awsx.S3Options(cfg))
	sshKey, err := devstack.CreateLoginKeys(ctx, ec2.NewFromConfig(cfg), s3c, g.Prefix, ops)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "login key pair's private key at %s (SSE-KMS)\n", sshKey)
	demo, err := devstack.SeedDemo(ctx, s3c, sqs.NewFromConfig(cfg), g.Prefix, c.Files)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "seeded %d files in s3://%s/input/ and %d work items in queue %s\n", len(demo.Keys), demo.Bucket, len(demo.Keys), demo.Queue)
	fmt.Fprintf(g.Stdout, "SORTIE_SSH_KEY=%s\n", sshKey)
	return nil
}

// DemoSubmitCmd is `sortie demo submit`.
type DemoSubmitCmd struct {
	Watch   bool          `help:"Follow the job until its fleet is terminated, print the summary; exit non-zero unless it succeeded."`
	Timeout time.Duration `help:"With --watch: give up after this long." default:"3m"`
}

// Run submits devstack.DemoJob for the seeded demo and, with --watch, follows it the way
// `sortie dev` does.
func (c *DemoSubmitCmd) Run(ctx context.Context, g *Globals) error {
	topo := bus.Topology{Prefix: g.Prefix}
	if err := topo.Validate(); err != nil {
		return err
	}
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	demo := devstack.DemoFor(g.Prefix)
	sqsc := sqs.NewFromConfig(cfg)
	// The planner sizes the job by the work queue's depth: without the queue it would
	// reject the job, and a watcher would wait for nothing.
	if _, err := sqsc.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(demo.Queue)}); err != nil {
		return fmt.Errorf("demo work queue %s: %w (run `sortie demo prepare` first)", demo.Queue, err)
	}
	var w *watch.Watcher
	if c.Watch {
		// Subscribe before publishing so no event is missed.
		if w, err = watch.Open(ctx, sns.NewFromConfig(cfg), sqsc, topo, "demo-"+randomHex(4)); err != nil {
			return err
		}
		defer w.Close(context.WithoutCancel(ctx))
	}
	pub, err := bus.NewPublisher(bus.PublisherConfig{Topology: topo, AWS: cfg})
	if err != nil {
		return err
	}
	defer pub.Close()
	now := time.Now()
	job := devstack.DemoJob(demo, "demo-"+now.UTC().Format("20060102-150405")+"-"+randomHex(2), "corr-"+randomHex(8), now)
	if err := pub.Publish(ctx, job); err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "submitted job %s (correlation id %s)\n\n", job.JobID, job.CorrelationID)
	if w == nil {
		return nil
	}
	fctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	trace, err := devstack.Follow(fctx, w, job.JobID, g.Stdout)
	if err != nil {
		return err
	}
	if err := devstack.PrintSummary(ctx, cloudwatch.NewFromConfig(cfg), g.Stdout, trace, now); err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "job wall time: %.1fs\n", time.Since(now).Seconds())
	if trace.Terminated.Outcome != events.OutcomeSucceeded {
		return fmt.Errorf("demo job %s %s", job.JobID, trace.Terminated.Outcome)
	}
	return nil
}
