package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/alecthomas/kong"

	"github.com/sortie-fleet/sortie/pkg/learn"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/simulate"
)

// SimulateCmd is `sortie simulate`: replay a synthetic trace of jobs against Sortie's sizing
// and two baseline autoscaling policies, or generate such a trace.
type SimulateCmd struct {
	Trace        string  `help:"The trace to replay (JSON, as --generate writes it)." type:"existingfile" xor:"source"`
	Generate     int     `help:"Generate a trace of this many jobs instead: written to --out, or replayed when --out is not set." xor:"source"`
	Seed         uint64  `help:"Seed of the generated trace." default:"1"`
	Out          string  `help:"With --generate: write the trace to this file and exit."`
	Calibration  int     `help:"The first jobs, run on each type in turn, whose throughputs are the first samples of the learned rates; not scored." default:"100"`
	Alpha        float64 `help:"Weight of each new sample in the learned rates (the ops config's learning.alpha)." default:"${alpha}"`
	SpreadFactor float64 `help:"Sortie sizes with the learned mean − this × spread (learning.spread_factor)." default:"${spread_factor}"`
	MinSamples   int     `help:"Samples a learned rate needs before Sortie sizes with it (learning.min_samples)." default:"${min_samples}"`
}

// learningDefaults are the ops config's learning defaults, for the flags' defaults.
var learningDefaults = kong.Vars{
	"alpha":         strconv.FormatFloat(opsconfig.DefaultAlpha, 'g', -1, 64),
	"spread_factor": strconv.FormatFloat(opsconfig.DefaultSpreadFactor, 'g', -1, 64),
	"min_samples":   strconv.Itoa(opsconfig.DefaultMinSamples),
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
	o := simulate.Options{CalibrationJobs: c.Calibration, Alpha: c.Alpha,
		Learning: learn.Policy{MinSamples: c.MinSamples, SpreadFactor: c.SpreadFactor}}
	scores, err := simulate.Run(t, o)
	if err != nil {
		return fmt.Errorf("simulate: %w", err)
	}
	return simulate.WriteTable(g.Stdout, t, o, scores)
}
