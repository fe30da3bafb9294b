package learn

import (
	"context"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/sizing"
)

// Reader is the ledger call that reads the rate learned for a profile and instance type
// (ledger.Ledger.LearnedRate).
type Reader interface {
	LearnedRate(ctx context.Context, profile, instanceType string) (Estimate, error)
}

// ReadTimeout bounds reading the learned rates of one job's candidates: a ledger that does
// not answer must not hold sizing up.
const ReadTimeout = 5 * time.Second

// MaxSourceError bounds the ledger error quoted in a rationale.
const MaxSourceError = 200

// Apply returns the candidates with the rate to size with for each: the learned rate once
// its estimate has the policy's samples (Choose), else the configured one; each names its
// source for the rationale. Learned rates that cannot be read leave the configured rates,
// and the rationale says so: sizing never waits on them. The planner sizes with it, and so
// do its replans and the provisioner's re-sizing for a fallback type.
func Apply(ctx context.Context, rates Reader, pol Policy, profile string, cands []sizing.Candidate) []sizing.Candidate {
	out := slices.Clone(cands)
	if rates == nil || pol.Off {
		for i, c := range out {
			out[i].RateSource = Choose(c.ItemsPerMinute, Estimate{}, pol).Source()
		}
		return out
	}
	ctx, cancel := context.WithTimeout(ctx, ReadTimeout)
	defer cancel()
	for i, c := range out {
		var ch Choice
		est, err := rates.LearnedRate(ctx, profile, c.InstanceType)
		if err != nil {
			bus.Logger(ctx).Warn("learned rate unreadable: sizing with the configured rate", "profile", profile,
				"instance_type", c.InstanceType, "error", err.Error())
			ch = Unreadable(c.ItemsPerMinute, pol, clippedError{err})
		} else {
			ch = Choose(c.ItemsPerMinute, est, pol)
		}
		out[i].ItemsPerMinute = min(max(ch.Rate, sizing.MinItemsPerMinute), sizing.MaxItemsPerMinute)
		out[i].RateSource = ch.Source()
	}
	return out
}

// clippedError keeps a long error short in a rationale.
type clippedError struct{ error }

func (e clippedError) Error() string {
	s := e.error.Error()
	if len(s) <= MaxSourceError {
		return s
	}
	cut := MaxSourceError - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
