package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/sortie-fleet/sortie/pkg/simulate"
)

// SimulateCmd is `sortie simulate`: replay a synthetic trace of jobs against Sortie's sizing
// and two baseline autoscaling policies, or generate such a trace.
type SimulateCmd struct {
	Trace       string  `help:"The trace to replay (JSON, as --generate writes it)." type:"existingfile" xor:"source"`
	Generate    int     `help:"Generate a trace of this many jobs instead: written to --out, or replayed when --out is not set." xor:"source"`
	Seed        uint64  `help:"Seed of the generated trace." default:"1"`
	Out         string  `help:"With --generate: write the trace to this file and exit."`
	Calibration int     `help:"The first jobs, run on each type in turn, whose throughputs calibrate the rates Sortie plans with; not scored." default:"100"`
	Quantile    float64 `help:"Plan with the throughput this share of jobs reaches (a log-normal fitted to the calibration jobs)." default:"0.995"`
}

// Run generates or reads the trace and prints the table.
func (c *SimulateCmd) Run(_ context.Context, g *Globals) error {
	var t simulate.Trace
	switch {
	case c.Generate > 0:
		t = simulate.Generate(c.Generate, c.Seed)
		if c.Out != "" {
			f, err := os.Create(c.Out)
			if err != nil {
				return err
			}
			if err := t.Write(f); err != nil {
				f.Close()
				return fmt.Errorf("writing trace: %w", err)
			}
			return f.Close()
		}
	case c.Trace != "":
		f, err := os.Open(c.Trace)
		if err != nil {
			return err
		}
		defer f.Close()
		if t, err = simulate.Read(f); err != nil {
			return fmt.Errorf("%s: %w", c.Trace, err)
		}
	default:
		return errors.New("simulate: give --trace FILE or --generate N")
	}
	o := simulate.Options{CalibrationJobs: c.Calibration, Quantile: c.Quantile}
	scores, err := simulate.Run(t, o)
	if err != nil {
		return fmt.Errorf("simulate: %w", err)
	}
	return simulate.WriteTable(g.Stdout, t, o, scores)
}
