package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/learn"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/opsload"
)

// ProfilesCmd is `sortie profiles`: the capacity profiles' configured and learned rates.
type ProfilesCmd struct {
	Config string `help:"The ops configuration the planner runs with: a file, s3://BUCKET/KEY or ssm://PARAMETER (as SORTIE_CONFIG); default: the embedded one." env:"SORTIE_CONFIG" placeholder:"LOCATION"`
	JSON   bool   `name:"json" help:"Print the rates as JSON."`
}

// ProfileRate is one (profile, instance type) as `sortie profiles` shows it.
type ProfileRate struct {
	Profile      string `json:"profile"`
	InstanceType string `json:"instance_type"`
	// Configured is the ops config's items_per_minute; nil when the config no longer has
	// the pair (a learned rate of a profile or type since removed).
	Configured *float64     `json:"configured_items_per_minute"`
	Learned    *LearnedRate `json:"learned"` // nil before the first sample
	// Uses is what the planner sizes with now: "learned", "configured", or "" when the
	// config has no such pair; Rate is that rate and Source says why in the rationale's words.
	Uses   string  `json:"planner_uses"`
	Rate   float64 `json:"planned_items_per_minute,omitempty"`
	Source string  `json:"source,omitempty"`
}

// LearnedRate is a learned estimate.
type LearnedRate struct {
	Mean      float64   `json:"mean_items_per_minute"`
	Spread    float64   `json:"spread"`
	Samples   int       `json:"samples"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Run reads the stack's learned rates and prints them beside the configured ones.
func (c *ProfilesCmd) Run(ctx context.Context, g *Globals) error {
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	s3c := s3.NewFromConfig(cfg, awsx.S3Options(cfg))
	topo := bus.Topology{Prefix: g.Prefix}
	if err := checkStack(ctx, s3c, topo); err != nil {
		return err
	}
	ops := opsconfig.Default()
	if c.Config != "" {
		loc, err := opsload.ParseLocation(c.Config)
		if err != nil {
			return err
		}
		if ops, err = (opsload.Loader{Location: loc, S3: s3c, SSM: ssm.NewFromConfig(cfg)}).Load(ctx); err != nil {
			return err
		}
	}
	learned, err := ledger.ListLearned(ctx, dynamodb.NewFromConfig(cfg), topo.LedgerTableName())
	if err != nil {
		return err
	}
	rows := profileRates(ops, learned)
	if c.JSON {
		b, err := json.MarshalIndent(rows, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(g.Stdout, "%s\n", b)
		return err
	}
	return writeProfileRates(g.Stdout, ops.Learning, rows)
}

// profileRates lists every (profile, instance type) of the ops config, and every learned
// one the config no longer has, by profile and type, with the rate the planner uses.
func profileRates(ops *opsconfig.Config, learned []ledger.Learned) []ProfileRate {
	type key struct{ profile, typ string }
	est := map[key]ledger.Learned{}
	for _, le := range learned {
		est[key{le.Profile, le.InstanceType}] = le
	}
	pol := ops.Learning.Policy()
	var out []ProfileRate
	seen := map[key]bool{}
	for _, name := range slices.Sorted(maps.Keys(ops.Profiles)) {
		for _, typ := range slices.Sorted(maps.Keys(ops.Profiles[name])) {
			k := key{name, typ}
			seen[k] = true
			configured := ops.Profiles[name][typ].ItemsPerMinute
			r := ProfileRate{Profile: name, InstanceType: typ, Configured: &configured}
			le, ok := est[k]
			if ok {
				r.Learned = learnedRate(le)
			}
			ch := learn.Choose(configured, le.Estimate, pol)
			r.Rate, r.Source, r.Uses = ch.Rate, ch.Source(), "configured"
			if ch.Learned {
				r.Uses = "learned"
			}
			out = append(out, r)
		}
	}
	for _, le := range learned {
		if !seen[key{le.Profile, le.InstanceType}] {
			out = append(out, ProfileRate{Profile: le.Profile, InstanceType: le.InstanceType, Learned: learnedRate(le),
				Source: "not in the ops config"})
		}
	}
	slices.SortStableFunc(out, func(a, b ProfileRate) int {
		return cmp.Or(strings.Compare(a.Profile, b.Profile), strings.Compare(a.InstanceType, b.InstanceType))
	})
	return out
}

func learnedRate(le ledger.Learned) *LearnedRate {
	return &LearnedRate{Mean: le.Mean, Spread: le.Spread(), Samples: le.Samples, UpdatedAt: le.Updated.UTC()}
}

// writeProfileRates prints the rates as a table, after a line stating the policy.
func writeProfileRates(w io.Writer, l opsconfig.Learning, rows []ProfileRate) error {
	l = l.WithDefaults()
	policy := fmt.Sprintf("learning: the learned rate after %d samples, at mean − %s × spread (alpha %s)",
		l.MinSamples, rate(*l.SpreadFactor), rate(l.Alpha))
	if l.Off {
		policy = "learning: off (the planner sizes with the configured rates)"
	}
	fmt.Fprintln(w, policy)
	if len(rows) == 0 {
		_, err := fmt.Fprintln(w, "no capacity profile")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROFILE\tTYPE\tCONFIGURED/MIN\tLEARNED/MIN\tSAMPLES\tUPDATED\tPLANNER USES")
	for _, r := range rows {
		configured, learnedText, samples, updated := "-", "-", "0", "-"
		if r.Configured != nil {
			configured = rate(*r.Configured)
		}
		if r.Learned != nil {
			learnedText = rate(r.Learned.Mean) + " ± " + rate(r.Learned.Spread)
			samples = strconv.Itoa(r.Learned.Samples)
			updated = r.Learned.UpdatedAt.Format(time.RFC3339)
		}
		uses := "- (" + r.Source + ")"
		if r.Uses != "" {
			uses = r.Uses + " " + rate(r.Rate)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Profile, r.InstanceType, configured, learnedText, samples, updated, uses)
	}
	return tw.Flush()
}

// rate renders a rate with at most 2 decimals.
func rate(f float64) string { return strconv.FormatFloat(math.Round(f*100)/100, 'f', -1, 64) }
