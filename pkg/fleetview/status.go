// Package fleetview reads what an operator needs to see of Sortie's fleets: the instances
// of each job from their EC2 tg, and each job's log archives from S3.
package fleetview

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/cost"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// Instance tg fleetview reads (issue 3).

// LiveStates are the instance states a status lists without --all.
var LiveStates = []string{"pending", "running", "shutting-down", "stopping", "stopped"}

// stageOrder is the order of sortie:stage values along the pipeline.
var stageOrder = []string{"launched", "bootstrapped", "finished"}

// EC2API is the EC2 call a status makes.
type EC2API interface {
	DescribeInstances(ctx context.Context, params *ec2.DescribeInstancesInput, optFns ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
}

var _ EC2API = (*ec2.Client)(nil)

// Query selects the instances of a status.
type Query struct {
	Stack string // the stack (its prefix): only instances tagged sortie:stack with it; required
	JobID string // one job; empty: every job
	All   bool   // include terminated instances
}

// Filters are the DescribeInstances filters for q.
func (q Query) Filters() []ec2types.Filter {
	f := []ec2types.Filter{
		{Name: aws.String("tag:" + tags.Stack), Values: []string{q.Stack}},
		{Name: aws.String("tag-key"), Values: []string{tags.JobID}},
	}
	if q.JobID != "" {
		f = append(f, ec2types.Filter{Name: aws.String("tag:" + tags.JobID), Values: []string{q.JobID}})
	}
	if !q.All {
		f = append(f, ec2types.Filter{Name: aws.String("instance-state-name"), Values: LiveStates})
	}
	return f
}

// Describe returns every Sortie instance of the stack q selects, across pages.
func Describe(ctx context.Context, api EC2API, q Query) ([]ec2types.Instance, error) {
	if q.Stack == "" {
		return nil, fmt.Errorf("describing instances: no stack: a status lists one stack's instances")
	}
	var out []ec2types.Instance
	p := ec2.NewDescribeInstancesPaginator(api, &ec2.DescribeInstancesInput{Filters: q.Filters(), MaxResults: aws.Int32(1000)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("describing Sortie instances: %w", err)
		}
		for _, r := range page.Reservations {
			out = append(out, r.Instances...)
		}
	}
	return out, nil
}

// Instance is one instance of a job, as its tg and EC2 describe it.
type Instance struct {
	ID           string     `json:"id"`
	State        string     `json:"state"`
	Type         string     `json:"instance_type"`
	Stage        string     `json:"stage,omitempty"`
	LaunchedAt   time.Time  `json:"launched_at,omitzero"`
	LeaseExpires *time.Time `json:"lease_expires,omitempty"` // nil: no lease tag, or it does not parse
	Expired      bool       `json:"expired"`                 // lease in the past on an instance not terminated
	SSHEndpoint  string     `json:"ssh_endpoint,omitempty"`
	Market       string     `json:"market,omitempty"`       // its sortie:market tag
	HourlyPrice  *float64   `json:"hourly_price,omitempty"` // its sortie:hourly-price tag; nil: none
}

// Job is the instances of one job.
type Job struct {
	JobID         string         `json:"job_id"`
	Fleet         string         `json:"fleet,omitempty"`
	Template      string         `json:"template,omitempty"`
	Stage         string         `json:"stage,omitempty"` // the instances' stages along the pipeline, comma separated
	States        map[string]int `json:"states"`          // instance count by state
	InstanceTypes []string       `json:"instance_types"`
	LaunchedAt    time.Time      `json:"launched_at,omitzero"` // the earliest launch
	AgeSeconds    int64          `json:"age_seconds"`          // since LaunchedAt
	// LeaseExpires is the earliest lease of the instances not terminated (the one that
	// runs out first), or, when every instance is terminated, the latest lease seen.
	LeaseExpires *time.Time `json:"lease_expires,omitempty"`
	Expired      bool       `json:"expired"` // some instance not terminated has an expired lease: a leak
	Instances    []Instance `json:"instances"`
	// Cost is what the instances have cost so far (until now for those still running), in
	// dollars; nil when an instance carries no price. PlannedCost is the plan's estimate; nil
	// when unknown.
	Cost        *float64 `json:"cost,omitempty"`
	PlannedCost *float64 `json:"planned_cost,omitempty"`
}

// live reports whether an instance in state s still runs, or may again: not terminated.
func live(s string) bool { return s != string(ec2types.InstanceStateNameTerminated) }

// Group sorts the instances into jobs by their sortie:job-id tag and judges their leases
// at now. Jobs are sorted by id, instances by id.
func Group(insts []ec2types.Instance, now time.Time) []Job {
	byJob := map[string]*Job{}
	raw := map[string][]ec2types.Instance{}
	for _, in := range insts {
		tg := tags.Map(in.Tags)
		id, ok := tg[tags.JobID]
		if !ok {
			continue
		}
		j := byJob[id]
		if j == nil {
			j = &Job{JobID: id, States: map[string]int{}}
			byJob[id] = j
		}
		raw[id] = append(raw[id], in)
		inst := Instance{
			ID:          aws.ToString(in.InstanceId),
			Type:        string(in.InstanceType),
			Stage:       tg[tags.Stage],
			LaunchedAt:  aws.ToTime(in.LaunchTime).UTC(),
			SSHEndpoint: tg[tags.SSHEndpoint],
			Market:      tg[tags.Market],
		}
		if p, err := cost.Parse(tg[tags.HourlyPrice]); err == nil {
			inst.HourlyPrice = &p
		}
		if in.State != nil {
			inst.State = string(in.State.Name)
		}
		if raw, ok := tg[tags.LeaseExpires]; ok {
			if exp, err := time.Parse(time.RFC3339, raw); err == nil {
				exp = exp.UTC()
				inst.LeaseExpires = &exp
				inst.Expired = live(inst.State) && now.After(exp)
			}
		}
		j.Instances = append(j.Instances, inst)
		j.Fleet = cmp.Or(j.Fleet, tg[tags.Fleet])
		j.Template = cmp.Or(j.Template, tg[tags.Template])
	}
	jobs := make([]Job, 0, len(byJob))
	for id, j := range byJob {
		if c, ok := cost.Instances(raw[id], now); ok {
			j.Cost = &c
		}
		if p := cost.PlannedCost(raw[id]); p > 0 {
			j.PlannedCost = &p
		}
		summarize(j, now)
		jobs = append(jobs, *j)
	}
	slices.SortFunc(jobs, func(a, b Job) int { return strings.Compare(a.JobID, b.JobID) })
	return jobs
}

// summarize fills in the job's fields that are computed from its instances.
func summarize(j *Job, now time.Time) {
	slices.SortFunc(j.Instances, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
	stages := map[string]bool{}
	types := map[string]bool{}
	var liveLease, anyLease *time.Time
	for _, in := range j.Instances {
		j.States[in.State]++
		if in.Stage != "" {
			stages[in.Stage] = true
		}
		if in.Type != "" {
			types[in.Type] = true
		}
		if !in.LaunchedAt.IsZero() && (j.LaunchedAt.IsZero() || in.LaunchedAt.Before(j.LaunchedAt)) {
			j.LaunchedAt = in.LaunchedAt
		}
		j.Expired = j.Expired || in.Expired
		if in.LeaseExpires == nil {
			continue
		}
		if live(in.State) && (liveLease == nil || in.LeaseExpires.Before(*liveLease)) {
			liveLease = in.LeaseExpires
		}
		if anyLease == nil || in.LeaseExpires.After(*anyLease) {
			anyLease = in.LeaseExpires
		}
	}
	j.LeaseExpires = cmp.Or(liveLease, anyLease)
	if !j.LaunchedAt.IsZero() {
		j.AgeSeconds = int64(now.Sub(j.LaunchedAt) / time.Second)
	}
	j.InstanceTypes = sortedKeys(types)
	var ordered []string
	for _, s := range stageOrder {
		if stages[s] {
			ordered = append(ordered, s)
			delete(stages, s)
		}
	}
	j.Stage = strings.Join(append(ordered, sortedKeys(stages)...), ",")
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// stateOrder orders the state counts of a row.
var stateOrder = []string{"pending", "running", "shutting-down", "stopping", "stopped", "terminated"}

// StatesText renders a job's instance counts by state: "2 running, 1 terminated".
func (j Job) StatesText() string {
	var parts []string
	seen := map[string]bool{}
	for _, s := range stateOrder {
		if n := j.States[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, s))
		}
		seen[s] = true
	}
	var other []string
	for s := range j.States {
		if !seen[s] {
			other = append(other, s)
		}
	}
	slices.Sort(other)
	for _, s := range other {
		parts = append(parts, fmt.Sprintf("%d %s", j.States[s], cmp.Or(s, "unknown")))
	}
	return strings.Join(parts, ", ")
}

// WriteTable prints the jobs as an aligned table, one row per job, judged at now.
func WriteTable(w io.Writer, jobs []Job, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tFLEET\tTEMPLATE\tSTAGE\tINSTANCES\tTYPE\tAGE\tLEASE\tCOST\tSSH")
	for _, j := range jobs {
		age := "-"
		if !j.LaunchedAt.IsZero() {
			age = Duration(now.Sub(j.LaunchedAt))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			cell(j.JobID), cell(j.Fleet), cell(j.Template), cell(j.Stage), j.StatesText(),
			cell(strings.Join(j.InstanceTypes, ",")), age, leaseText(j, now), costText(j), cell(sshText(j)))
	}
	return tw.Flush()
}

// costText is a job's cost column: "$0.0123", with the plan's "(planned $0.0150)" when
// known; "-" when an instance carries no price.
func costText(j Job) string {
	s := "-"
	if j.Cost != nil {
		s = fmt.Sprintf("$%.4f", *j.Cost)
	}
	if j.PlannedCost != nil {
		s += fmt.Sprintf(" (planned $%.4f)", *j.PlannedCost)
	}
	return s
}

// leaseText is a job's lease column: when it ends, relative to now, and EXPIRED for a leak.
func leaseText(j Job, now time.Time) string {
	if j.LeaseExpires == nil {
		return "-"
	}
	at := j.LeaseExpires.Format(time.RFC3339)
	d := j.LeaseExpires.Sub(now)
	switch {
	case j.Expired:
		return fmt.Sprintf("%s EXPIRED %s ago", at, Duration(-d))
	case d >= 0:
		return fmt.Sprintf("%s (in %s)", at, Duration(d))
	default:
		return fmt.Sprintf("%s (%s ago)", at, Duration(-d))
	}
}

// sshText is a job's SSH column: the endpoints of its instances not terminated.
func sshText(j Job) string {
	var eps []string
	for _, in := range j.Instances {
		if in.SSHEndpoint != "" && live(in.State) {
			eps = append(eps, in.SSHEndpoint)
		}
	}
	switch len(eps) {
	case 0:
		return ""
	case 1, 2:
		return strings.Join(eps, ",")
	default:
		return fmt.Sprintf("%s,%s (+%d more)", eps[0], eps[1], len(eps)-2)
	}
}

// cell keeps a tag value from breaking the table: empty becomes "-", whitespace and
// control characters become "?".
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

// Duration renders d coarsely for a table: 45s, 3m12s, 2h05m, 3d04h.
func Duration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	default:
		return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
	}
}
