package planner

import (
	"context"

	"github.com/sortie-fleet/sortie/pkg/learn"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/sizing"
)

// rateReader is the ledger call the planner makes to read the rates learned from
// finished jobs.
type rateReader = learn.Reader

var _ rateReader = (*ledger.Ledger)(nil)

// maxSourceError bounds the ledger error quoted in a rationale.
const maxSourceError = learn.MaxSourceError

// withLearned is learn.Apply: the candidates with the rate the planner sizes with.
func withLearned(ctx context.Context, rates rateReader, pol learn.Policy, profile string, cands []sizing.Candidate) []sizing.Candidate {
	return learn.Apply(ctx, rates, pol, profile, cands)
}
