package main

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/infra"
)

// InfraCmd groups infra up and down.
type InfraCmd struct {
	Up   InfraUpCmd   `cmd:"" help:"Create every topic, queue, DLQ, subscription and the buckets with their policies, tagged sortie:stack=<prefix> (idempotent)."`
	Down InfraDownCmd `cmd:"" help:"Remove exactly what up created, only where tagged sortie:stack=<prefix>; a non-empty log bucket is kept unless --empty-bucket."`
}

// InfraUpCmd is `sortie infra up`.
type InfraUpCmd struct {
	JSON bool `name:"json" help:"Print what was done as JSON: {\"resources\": [{action, kind, name, detail}]}."`
}

// Run creates the stack and prints what it did.
func (c *InfraUpCmd) Run(ctx context.Context, g *Globals) error {
	topo := bus.Topology{Prefix: g.Prefix}
	if err := topo.Validate(); err != nil {
		return err
	}
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	report, err := infra.Up(ctx, infra.NewClients(cfg), topo)
	printReport(g, report, c.JSON)
	if err != nil {
		return fmt.Errorf("infra up: %w", err)
	}
	return nil
}

// InfraDownCmd is `sortie infra down`.
type InfraDownCmd struct {
	EmptyBucket bool `help:"Delete the archived logs in the bucket so it can be removed too."`
	JSON        bool `name:"json" help:"Print what was done as JSON."`
}

// Run removes the stack and prints what it did.
func (c *InfraDownCmd) Run(ctx context.Context, g *Globals) error {
	topo := bus.Topology{Prefix: g.Prefix}
	if err := topo.Validate(); err != nil {
		return err
	}
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	report, err := infra.Down(ctx, infra.NewClients(cfg), topo, infra.DownOptions{EmptyBucket: c.EmptyBucket})
	printReport(g, report, c.JSON)
	if err != nil {
		return fmt.Errorf("infra down: %w", err)
	}
	return nil
}

// printReport prints what infra up or down did, as text or JSON.
func printReport(g *Globals, r infra.Report, asJSON bool) {
	if !asJSON {
		fmt.Fprint(g.Stdout, r.String())
		return
	}
	if r.Lines == nil {
		r.Lines = []infra.Line{}
	}
	b, _ := json.MarshalIndent(r, "", "  ") // plain strings: never fails
	fmt.Fprintf(g.Stdout, "%s\n", b)
}
