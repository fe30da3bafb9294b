package planner

import (
	"context"
	"slices"
	"time"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/learn"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/sizing"
)

// rateReader is the ledger call the planner makes to read the rates learned from
// finished jobs.
type rateReader interface {
	LearnedRate(ctx context.Context, profile, instanceType string) (learn.Estimate, error)
}

var _ rateReader = (*ledger.Ledger)(nil)

// learnedReadTimeout bounds reading the learned rates of one job's candidates: a ledger
// that does not answer must not hold planning up.
const learnedReadTimeout = 5 * time.Second

// maxSourceError bounds the ledger error quoted in a rationale.
const maxSourceError = 200

// withLearned returns the candidates with the rate the planner sizes with for each: the
// learned rate once its estimate has the policy's samples (learn.Choose), else the
// configured one; each names its source for the rationale. Learned rates that cannot be
// read leave the configured rates, and the rationale says so: planning never waits on them.
func withLearned(ctx context.Context, rates rateReader, pol learn.Policy, profile string, cands []sizing.Candidate) []sizing.Candidate {
	out := slices.Clone(cands)
	if rates == nil || pol.Off {
		for i, c := range out {
			out[i].RateSource = learn.Choose(c.ItemsPerMinute, learn.Estimate{}, pol).Source()
		}
		return out
	}
	ctx, cancel := context.WithTimeout(ctx, learnedReadTimeout)
	defer cancel()
	for i, c := range out {
		var ch learn.Choice
		est, err := rates.LearnedRate(ctx, profile, c.InstanceType)
		if err != nil {
			bus.Logger(ctx).Warn("learned rate unreadable: sizing with the configured rate", "profile", profile,
				"instance_type", c.InstanceType, "error", err.Error())
			ch = learn.Unreadable(c.ItemsPerMinute, pol, clipped(err))
		} else {
			ch = learn.Choose(c.ItemsPerMinute, est, pol)
		}
		out[i].ItemsPerMinute = min(max(ch.Rate, sizing.MinItemsPerMinute), sizing.MaxItemsPerMinute)
		out[i].RateSource = ch.Source()
	}
	return out
}

// clippedError keeps a long error short in a rationale.
type clippedError struct{ error }

func (e clippedError) Error() string { return truncate(e.error.Error(), maxSourceError) }

func clipped(err error) error { return clippedError{err} }
