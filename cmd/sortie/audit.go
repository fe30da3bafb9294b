package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/sortie-fleet/sortie/pkg/audit"
	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/devstack"
)

// AuditCmd is `sortie audit`.
type AuditCmd struct {
	Bucket []string `help:"Audit this bucket too (repeatable)." placeholder:"NAME" sep:"none"`
	JSON   bool     `name:"json" help:"Print the report as JSON."`
}

// Run audits the stack's log and secrets buckets and any --bucket, prints the report, and
// fails when a finding is non-compliant. A bucket that does not exist is reported MISSING
// and does not fail the audit.
func (c *AuditCmd) Run(ctx context.Context, g *Globals) error {
	topo := bus.Topology{Prefix: g.Prefix}
	if err := topo.Validate(); err != nil {
		return err
	}
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	buckets := append([]string{topo.BucketName(), devstack.SecretsBucket(g.Prefix)}, c.Bucket...)
	report, err := audit.Audit(ctx, audit.NewClients(cfg), buckets)
	if err != nil {
		return err
	}
	if c.JSON {
		b, err := json.MarshalIndent(report, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(g.Stdout, "%s\n", b)
	} else {
		fmt.Fprint(g.Stdout, report.String())
	}
	n := report.NonCompliant()
	if n == 0 {
		return nil
	}
	findings := fmt.Sprintf("%d non-compliant finding", n)
	if n > 1 {
		findings += "s"
	}
	bad := report.NonCompliantBuckets()
	if len(bad) == 1 {
		return fmt.Errorf("%s in bucket %s", findings, bad[0])
	}
	return fmt.Errorf("%s in %d buckets: %s", findings, len(bad), strings.Join(bad, ", "))
}
