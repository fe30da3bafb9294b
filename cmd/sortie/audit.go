package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/sortie-fleet/sortie/pkg/audit"
	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/service"
)

// AuditCmd is `sortie audit`.
type AuditCmd struct {
	Bucket []string `help:"Audit this bucket too (repeatable)." placeholder:"NAME" sep:"none"`
	Config string   `help:"The ops configuration whose templates' security groups are audited: a file, s3://bucket/key or ssm:/parameter/name (default: the embedded one)." env:"SORTIE_CONFIG" placeholder:"LOCATION"`
	JSON   bool     `name:"json" help:"Print the evaluations as JSON, in the shape of AWS Config's PutEvaluations."`
}

// Run audits the stack (its buckets, topics, roles and instances, the templates' security
// groups, the EventBridge rule and queue bringing EC2's notices to the monitor) and any
// --bucket, prints the report, and fails when an evaluation is
// NON_COMPLIANT, a bucket or topic the stack uses does not exist included.
func (c *AuditCmd) Run(ctx context.Context, g *Globals) error {
	base := service.Base{Prefix: g.Prefix, OpsConfig: c.Config}
	topo := base.Topology()
	if err := topo.Validate(); err != nil {
		return err
	}
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	ops, err := base.LoadOps(ctx, cfg)
	if err != nil {
		return err
	}
	var groups []string
	for _, name := range slices.Sorted(maps.Keys(ops.Templates)) {
		groups = append(groups, ops.Templates[name].SecurityGroups...)
	}
	report, err := audit.Audit(ctx, audit.NewClients(cfg), audit.Target{Topology: topo, Buckets: c.Bucket, SecurityGroups: groups})
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
	bad := report.NonCompliantResources()
	if len(bad) == 1 {
		return fmt.Errorf("%s: %s", findings, bad[0])
	}
	return fmt.Errorf("%s in %d resources: %s", findings, len(bad), strings.Join(bad, ", "))
}
