package simulate

import (
	"fmt"
	"io"
	"math"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/sortie-fleet/sortie/pkg/learn"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/sizing"
)

// Options tune a replay.
type Options struct {
	// CalibrationJobs are the trace's first jobs, run in turn on each instance type with the
	// profile's configured rates; their observed throughputs are the first samples of the
	// learned rates. Scores count only the jobs after them.
	CalibrationJobs int
	// Learning is the planner's use of learned rates (the ops config's `learning`): Sortie
	// sizes with learn.Choose on the estimates, which learn from every job as the reaper's
	// samples do (pkg/learn, the planner's and reaper's own code).
	Learning learn.Policy
	// Alpha weighs each new sample (learn.Estimate.Update).
	Alpha float64
}

// DefaultOptions calibrate on the first 100 jobs and learn as the ops config's defaults do.
var DefaultOptions = Options{
	CalibrationJobs: 100,
	Learning:        learn.Policy{MinSamples: opsconfig.DefaultMinSamples, SpreadFactor: opsconfig.DefaultSpreadFactor},
	Alpha:           opsconfig.DefaultAlpha,
}

// Score is how one policy did on the scored jobs.
type Score struct {
	Policy          string
	Jobs            int
	Met             int     // deadlines met
	InstanceMinutes float64 // boot + work of every instance, until the job's last item
	Cost            float64 // dollars, per-second billing, 60 s minimum per instance
	// OverOracle is InstanceMinutes relative to the oracle's, minus 1 (0.05 is 5 % more).
	OverOracle     float64
	CostOverOracle float64
}

// MetShare is the share of deadlines met.
func (s Score) MetShare() float64 { return float64(s.Met) / float64(s.Jobs) }

// choice is a policy's fleet for one job.
type choice struct {
	typ   int
	count int
}

// policy sizes one job, and learns from its run when it learns.
type policy struct {
	name    string
	size    func(j Job) choice
	observe func(j Job, c choice, r outcome)
}

// Run replays the trace against Sortie's sizing (with learned rates and as configured), the
// baselines and the oracle, and returns one score per policy, the oracle last.
func Run(t Trace, o Options) ([]Score, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	if o.CalibrationJobs < 0 || o.CalibrationJobs >= len(t.Jobs) {
		return nil, fmt.Errorf("calibration jobs: need 0 ≤ n < %d jobs, got %d", len(t.Jobs), o.CalibrationJobs)
	}
	if err := learn.CheckAlpha(o.Alpha); err != nil {
		return nil, err
	}
	if !(o.Learning.SpreadFactor >= 0) || o.Learning.MinSamples < 0 {
		return nil, fmt.Errorf("learning: need spread factor ≥ 0 and min samples ≥ 0, got %v and %d", o.Learning.SpreadFactor, o.Learning.MinSamples)
	}
	learned := calibrate(t, t.Jobs[:o.CalibrationJobs], o)
	configured := make([]sizing.Candidate, len(t.Types))
	for i, ty := range t.Types {
		configured[i] = sizing.Candidate{InstanceType: ty.InstanceType, ItemsPerMinute: ty.ConfiguredItemsPerMinute,
			BootSeconds: ty.BootSeconds, HourlyPrice: ty.HourlyPrice}
	}
	means := meanRates(t, t.Jobs[:o.CalibrationJobs])
	// The baselines scale one instance type: the cheapest per item at the measured means.
	base := 0
	for i, ty := range t.Types {
		if ty.HourlyPrice/means[i] < t.Types[base].HourlyPrice/means[base] {
			base = i
		}
	}
	// KEDA's SQS scaler: ceil(backlog / queueLength target). The operator sets the target
	// once: what one instance does, at the measured mean rate, in the trace's median
	// deadline less boot.
	kedaTarget := means[base] * (median(t.Jobs, func(j Job) float64 { return j.DeadlineSeconds }) - t.Types[base].BootSeconds) / 60

	policies := []policy{
		{name: "sortie (learned rates)", size: func(j Job) choice { return sortie(t, learned.candidates(), j) }, observe: learned.observe},
		{name: "sortie (profile as configured)", size: func(j Job) choice { return sortie(t, configured, j) }},
		{name: "keda ceil(items / target)", size: func(j Job) choice {
			return choice{base, clamp(t, int(math.Ceil(float64(j.Items)/kedaTarget)))}
		}},
		// AWS's queue-depth scaling example: acceptable backlog per instance = acceptable
		// latency (the job's deadline) / processing time per message (the measured mean).
		{name: "aws backlog per instance", size: func(j Job) choice {
			backlog := j.DeadlineSeconds / (60 / means[base])
			return choice{base, clamp(t, int(math.Ceil(float64(j.Items)/backlog)))}
		}},
		{name: "oracle (true throughput)", size: func(j Job) choice { return oracle(t, j) }},
	}
	scored := t.Jobs[o.CalibrationJobs:]
	scores := make([]Score, len(policies))
	for i, p := range policies {
		s := Score{Policy: p.name, Jobs: len(scored)}
		for _, j := range scored {
			c := p.size(j)
			r := run(t, j, c)
			if p.observe != nil {
				p.observe(j, c, r)
			}
			if r.finish <= j.DeadlineSeconds*(1+1e-9) {
				s.Met++
			}
			s.InstanceMinutes += r.instanceSeconds / 60
			s.Cost += r.cost
		}
		scores[i] = s
	}
	o0 := scores[len(scores)-1]
	for i := range scores {
		scores[i].OverOracle = scores[i].InstanceMinutes/o0.InstanceMinutes - 1
		scores[i].CostOverOracle = scores[i].Cost/o0.Cost - 1
	}
	return scores, nil
}

// sortie sizes j as the planner does: sizing.Plan on the time left at planning.
func sortie(t Trace, cands []sizing.Candidate, j Job) choice {
	res, err := sizing.Plan(sizing.Request{
		Items:      j.Items,
		Deadline:   seconds(j.DeadlineSeconds),
		Waited:     seconds(j.WaitSeconds),
		Candidates: cands,
		Min:        t.MinInstances,
		Max:        t.MaxInstances,
	})
	if err != nil { // the trace was validated: cannot happen
		panic(fmt.Sprintf("sizing job %s: %v", j.ID, err))
	}
	for i, c := range cands {
		if c.InstanceType == res.InstanceType {
			return choice{i, res.Count}
		}
	}
	panic("sizing chose an unknown type " + res.InstanceType)
}

// oracle knows j's true throughput on every type: the cheapest type and smallest count
// that meet the deadline from when the job is planned (or the most instances of the type
// that finishes soonest when none can).
func oracle(t Trace, j Job) choice {
	best, bestCost := choice{-1, 0}, math.Inf(1)
	soonest, soonestAt := choice{0, t.MaxInstances}, math.Inf(1)
	for i, ty := range t.Types {
		rate := ty.TrueItemsPerMinute * j.Speed[i] / 60 // items per second per instance
		usable := j.DeadlineSeconds - j.WaitSeconds - ty.BootSeconds
		n := t.MaxInstances + 1
		if usable > 0 {
			n = clamp(t, int(math.Ceil(float64(j.Items)/(rate*usable)*(1-1e-9))))
		}
		if at := ty.BootSeconds + float64(j.Items)/(rate*float64(t.MaxInstances)); at < soonestAt {
			soonest, soonestAt = choice{i, t.MaxInstances}, at
		}
		if n > t.MaxInstances {
			continue
		}
		work := float64(j.Items) / (rate * float64(n))
		cost := float64(n) * ty.HourlyPrice * math.Max(60, ty.BootSeconds+work) / 3600
		if cost < bestCost {
			best, bestCost = choice{i, n}, cost
		}
	}
	if best.typ < 0 {
		return soonest
	}
	return best
}

// outcome is one fleet's run.
type outcome struct {
	finish          float64 // seconds from submission to the last item
	instanceSeconds float64
	cost            float64
	interrupted     bool // an instance was lost: the job gives no rate sample
}

// run plays fleet c on job j: the instances boot, share the items (a queue keeps them
// equally busy) and stop with the last item. A spot interruption takes one instance away
// at the time the job's draw gives; a fleet left empty launches one replacement, which
// boots first.
func run(t Trace, j Job, c choice) outcome {
	ty := t.Types[c.typ]
	rate := ty.TrueItemsPerMinute * j.Speed[c.typ] / 60
	n := float64(c.count)
	items := float64(j.Items)
	work := items / (rate * n) // seconds of work with the whole fleet
	interruptAt := math.Inf(1)
	if t.SpotInterruptionsPerHour > 0 {
		interruptAt = -math.Log(j.InterruptDraw) / (t.SpotInterruptionsPerHour * n) * 3600
	}
	billed := func(s float64) float64 { return math.Max(60, s) }
	price := ty.HourlyPrice / 3600
	if interruptAt >= work {
		per := ty.BootSeconds + work
		return outcome{finish: j.WaitSeconds + per, instanceSeconds: n * per, cost: n * billed(per) * price}
	}
	left := items - rate*n*interruptAt
	lost := ty.BootSeconds + interruptAt // the interrupted instance's time
	if c.count > 1 {
		rest := left / (rate * (n - 1))
		per := ty.BootSeconds + interruptAt + rest
		return outcome{
			finish:          j.WaitSeconds + per,
			instanceSeconds: (n-1)*per + lost,
			cost:            ((n-1)*billed(per) + billed(lost)) * price,
			interrupted:     true,
		}
	}
	repl := ty.BootSeconds + left/rate
	return outcome{
		finish:          j.WaitSeconds + lost + repl,
		instanceSeconds: lost + repl,
		cost:            (billed(lost) + billed(repl)) * price,
		interrupted:     true,
	}
}

// learner is the planner's learned rates in a replay: one estimate per type, fed as the
// reaper feeds the ledger's and read as the planner reads them.
type learner struct {
	t   Trace
	o   Options
	est []learn.Estimate
}

// calibrate starts the learned rates with the calibration jobs, run on each type in turn:
// each one's observed throughput is a sample of its type.
func calibrate(t Trace, jobs []Job, o Options) *learner {
	l := &learner{t: t, o: o, est: make([]learn.Estimate, len(t.Types))}
	for k, j := range jobs {
		i := k % len(t.Types)
		l.est[i] = l.est[i].Update(t.Types[i].TrueItemsPerMinute*j.Speed[i], o.Alpha, time.Time{})
	}
	return l
}

// candidates are the types at the rates the planner sizes with now (learn.Choose).
func (l *learner) candidates() []sizing.Candidate {
	out := make([]sizing.Candidate, len(l.t.Types))
	for i, ty := range l.t.Types {
		ch := learn.Choose(ty.ConfiguredItemsPerMinute, l.est[i], l.o.Learning)
		out[i] = sizing.Candidate{InstanceType: ty.InstanceType, ItemsPerMinute: ch.Rate,
			BootSeconds: ty.BootSeconds, HourlyPrice: ty.HourlyPrice}
	}
	return out
}

// observe learns from a job's run as the reaper does: a fleet that lost an instance gives
// no sample (learn.Observe), any other gives its type's throughput on the job.
func (l *learner) observe(j Job, c choice, r outcome) {
	if r.interrupted {
		return
	}
	l.est[c.typ] = l.est[c.typ].Update(l.t.Types[c.typ].TrueItemsPerMinute*j.Speed[c.typ], l.o.Alpha, time.Time{})
}

// meanRates are the mean observed throughputs per type over the calibration jobs (the
// configured rate for a type never observed), what a baseline operator would measure.
func meanRates(t Trace, jobs []Job) []float64 {
	out := make([]float64, len(t.Types))
	for i, ty := range t.Types {
		sum, n := 0.0, 0
		for k, j := range jobs {
			if k%len(t.Types) == i {
				sum += ty.TrueItemsPerMinute * j.Speed[i]
				n++
			}
		}
		out[i] = ty.ConfiguredItemsPerMinute
		if n > 0 {
			out[i] = sum / float64(n)
		}
	}
	return out
}

func median(jobs []Job, f func(Job) float64) float64 {
	xs := make([]float64, len(jobs))
	for i, j := range jobs {
		xs[i] = f(j)
	}
	slices.Sort(xs)
	return xs[len(xs)/2]
}

func clamp(t Trace, n int) int { return min(max(n, t.MinInstances, 1), t.MaxInstances) }

func seconds(s float64) time.Duration { return time.Duration(math.Round(s * float64(time.Second))) }

// WriteTable prints the scores as the README's table.
func WriteTable(w io.Writer, t Trace, o Options, scores []Score) error {
	fmt.Fprintf(w, "%d jobs (seed %d), scored on the %d after %d calibration jobs; learned rates: alpha %g, mean − %g × spread after %d samples\n\n",
		len(t.Jobs), t.Seed, len(t.Jobs)-o.CalibrationJobs, o.CalibrationJobs, o.Alpha, o.Learning.SpreadFactor, o.Learning.MinSamples)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "policy\tdeadlines met\tinstance-minutes\tvs oracle\tcost\tvs oracle")
	for _, s := range scores {
		fmt.Fprintf(tw, "%s\t%.1f %% (%d/%d)\t%.0f\t%+.1f %%\t$%.2f\t%+.1f %%\n", s.Policy, 100*s.MetShare(),
			s.Met, s.Jobs, s.InstanceMinutes, 100*s.OverOracle, s.Cost, 100*s.CostOverOracle)
	}
	return tw.Flush()
}
