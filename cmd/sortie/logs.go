package main

import (
	"context"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/fleetview"
)

// LogsCmd is `sortie logs`: print a finished job's logs from the archives the reaper stored.
type LogsCmd struct {
	JobID    string `arg:"" name:"job-id" help:"The job whose logs to print."`
	Instance string `help:"Only this instance's archive." placeholder:"ID"`
	File     string `help:"Print the files whose name (base name, path, or path below .sortie/) matches this glob (default: every *.log and stderr)." placeholder:"PATTERN"`
	Tail     int    `help:"Print only the last N lines of each file." placeholder:"N"`
}

// Run streams the job's archives from <prefix>-logs and prints the matching files under
// tail(1)-style headers. Nothing is written to disk.
func (c *LogsCmd) Run(ctx context.Context, g *Globals) error {
	topo := bus.Topology{Prefix: g.Prefix}
	if err := topo.Validate(); err != nil {
		return err
	}
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	return fleetview.PrintLogs(ctx, s3.NewFromConfig(cfg, awsx.S3Options(cfg)), g.Stdout, fleetview.LogsRequest{
		Bucket: topo.BucketName(), JobID: c.JobID, InstanceID: c.Instance, Pattern: c.File, Tail: c.Tail,
	})
}
