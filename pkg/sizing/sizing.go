// Package sizing turns a work size, a deadline and per-instance-type capacities into a fleet plan.
package sizing

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ErrInvalidRequest is wrapped by every validation error Plan returns.
var ErrInvalidRequest = errors.New("invalid sizing request")

// relEps absorbs floating-point noise so that exactly divisible work does not round up
// (200 items at 10/min for 10 min needs 2 instances, not 3).
const relEps = 1e-9

// Bounds on a candidate's numbers. They keep every estimate and cost finite (so a plan always
// encodes as JSON) and reject NaN and infinities.
const (
	MinItemsPerMinute = 1e-6
	MaxItemsPerMinute = 1e12
	MaxBootSeconds    = 1e9
	MaxHourlyPrice    = 1e6
)

// minBilledSeconds is EC2's per-instance minimum charge under per-second billing.
const minBilledSeconds = 60

// Candidate is one instance type's capacity for a workload profile.
type Candidate struct {
	InstanceType   string
	ItemsPerMinute float64
	BootSeconds    float64
	HourlyPrice    float64
	// RateSource says where ItemsPerMinute comes from ("configured", "learned: …"); when
	// set, the rationale gives it after each candidate's rate.
	RateSource string
}

// Request is the work to size: Items within what is left of Deadline once Waited has
// passed (the time from submission to planning), on one of Candidates, with a count in
// [Min, Max].
type Request struct {
	Items    int
	Deadline time.Duration
	// Waited is how long the job waited between submission and planning: the fleet has
	// Deadline − Waited, less its boot time, to do the work. Zero plans on the whole deadline.
	Waited     time.Duration
	Candidates []Candidate
	Min, Max   int
}

// Result is the chosen plan. When no candidate can meet the deadline, MeetsDeadline is false
// and the plan is Max instances of the candidate that finishes soonest at Max.
type Result struct {
	InstanceType     string
	Count            int
	EstimatedSeconds float64 // boot + processing, from launch to the last item
	Cost             float64 // dollars: per-second billing, 60 s minimum per instance
	MeetsDeadline    bool
	Rationale        string // the arithmetic in words
}

// left is the time left at planning.
func (req Request) left() time.Duration { return req.Deadline - req.Waited }

// option is one candidate worked out.
type option struct {
	c        Candidate
	needed   float64 // unclamped instance count (may exceed any int)
	count    int
	est      float64
	cost     float64
	meets    bool
	noTime   bool // boot time leaves no time for work
	raised   bool // count raised to Min
	estAtMax float64
	costAtM  float64
}

// Plan picks the cheapest candidate and count that process req.Items within req.Deadline
// (ties: fewer instances, then candidate order).
func Plan(req Request) (Result, error) {
	if err := validate(req); err != nil {
		return Result{}, err
	}
	deadline := req.left().Seconds()
	lo := max(req.Min, 1)

	opts := make([]option, len(req.Candidates))
	for i, c := range req.Candidates {
		opts[i] = evaluate(c, req.Items, deadline, lo, req.Max)
	}

	best := -1
	for i, o := range opts {
		if !o.meets {
			continue
		}
		if best < 0 || better(o.cost, o.count, opts[best].cost, opts[best].count) {
			best = i
		}
	}
	if best >= 0 {
		o := opts[best]
		return Result{
			InstanceType:     o.c.InstanceType,
			Count:            o.count,
			EstimatedSeconds: o.est,
			Cost:             o.cost,
			MeetsDeadline:    true,
			Rationale:        rationale(req, opts, best),
		}, nil
	}

	// Nobody meets the deadline: plan the max of whichever finishes soonest at max.
	soonest := 0
	for i, o := range opts {
		s := opts[soonest]
		if o.estAtMax < s.estAtMax && !approxEqual(o.estAtMax, s.estAtMax) {
			soonest = i
		} else if approxEqual(o.estAtMax, s.estAtMax) && o.costAtM < s.costAtM && !approxEqual(o.costAtM, s.costAtM) {
			soonest = i
		}
	}
	o := opts[soonest]
	return Result{
		InstanceType:     o.c.InstanceType,
		Count:            req.Max,
		EstimatedSeconds: o.estAtMax,
		Cost:             o.costAtM,
		MeetsDeadline:    false,
		Rationale:        rationaleLate(req, opts, soonest),
	}, nil
}

func evaluate(c Candidate, items int, deadline float64, lo, hi int) option {
	o := option{c: c}
	o.estAtMax = estimate(c, items, hi)
	o.costAtM = cost(c, hi, o.estAtMax)

	usable := deadline - c.BootSeconds
	if usable <= 0 {
		o.noTime = true
		o.needed = math.Inf(1)
		o.count = hi
		o.est = o.estAtMax
		o.cost = o.costAtM
		return o
	}
	perInstance := c.ItemsPerMinute * usable / 60 // items one instance finishes in time
	o.needed = float64(items) / perInstance
	n := math.Ceil(o.needed * (1 - relEps))
	switch {
	case n > float64(hi):
		o.count = hi // misses the deadline, see below
	case n < float64(lo):
		o.count, o.raised = lo, lo > 1
	default:
		o.count = int(n)
	}
	o.est = estimate(c, items, o.count)
	// Meets when the estimate is within the deadline, allowing the noise relEps absorbed above.
	if o.est <= deadline*(1+10*relEps) {
		o.meets = true
		o.est = math.Min(o.est, deadline)
	}
	o.cost = cost(c, o.count, o.est)
	return o
}

// estimate returns the seconds from launch until count instances finish items.
func estimate(c Candidate, items, count int) float64 {
	return c.BootSeconds + float64(items)/(float64(count)*c.ItemsPerMinute)*60
}

// cost is count instances billed per second, 60 s minimum each, for est seconds.
func cost(c Candidate, count int, est float64) float64 {
	billed := math.Max(minBilledSeconds, math.Ceil(est*(1-relEps)))
	return float64(count) * c.HourlyPrice * billed / 3600
}

// better reports whether (cost a, count a) beats (cost b, count b); equal plans keep the earlier.
func better(costA float64, countA int, costB float64, countB int) bool {
	if !approxEqual(costA, costB) {
		return costA < costB
	}
	return countA < countB
}

func approxEqual(a, b float64) bool {
	if a == b {
		return true
	}
	return math.Abs(a-b) <= relEps*math.Max(math.Abs(a), math.Abs(b))
}

func validate(req Request) error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrInvalidRequest, field, fmt.Sprintf(format, args...)))
	}
	if req.Items < 1 {
		bad("items", "must be ≥ 1, got %d", req.Items)
	}
	if req.Deadline <= 0 {
		bad("deadline", "must be > 0, got %s", req.Deadline)
	}
	if len(req.Candidates) == 0 {
		bad("candidates", "must not be empty")
	}
	if req.Waited < 0 {
		bad("waited", "must be ≥ 0, got %s", req.Waited)
	}
	if req.Min < 0 {
		bad("min", "must be ≥ 0, got %d", req.Min)
	}
	if req.Max < 1 {
		bad("max", "must be ≥ 1, got %d", req.Max)
	}
	if req.Min > req.Max {
		bad("min", "must be ≤ max (%d), got %d", req.Max, req.Min)
	}
	for i, c := range req.Candidates {
		field := fmt.Sprintf("candidates[%d]", i)
		if c.InstanceType == "" {
			bad(field+".instance_type", "must not be empty")
		}
		if !(c.ItemsPerMinute > 0) {
			bad(field+".items_per_minute", "must be > 0, got %v", c.ItemsPerMinute)
		} else if !(c.ItemsPerMinute >= MinItemsPerMinute && c.ItemsPerMinute <= MaxItemsPerMinute) {
			bad(field+".items_per_minute", "must be within [%g, %g], got %v", MinItemsPerMinute, MaxItemsPerMinute, c.ItemsPerMinute)
		}
		if !(c.BootSeconds >= 0 && c.BootSeconds <= MaxBootSeconds) {
			bad(field+".boot_seconds", "must be within [0, %g], got %v", MaxBootSeconds, c.BootSeconds)
		}
		if !(c.HourlyPrice >= 0 && c.HourlyPrice <= MaxHourlyPrice) {
			bad(field+".hourly_price", "must be within [0, %g], got %v", MaxHourlyPrice, c.HourlyPrice)
		}
	}
	return errors.Join(errs...)
}

// rationale explains a plan that meets the deadline, e.g.
// "202 items, 10/min per m3.medium, 10 min deadline → 3 instances, ≈6.7 min".
func rationale(req Request, opts []option, chosen int) string {
	o := opts[chosen]
	var b strings.Builder
	fmt.Fprintf(&b, "%s, %s/min per %s%s", plural(req.Items, "item"), num(o.c.ItemsPerMinute), o.c.InstanceType, source(o.c))
	if o.c.BootSeconds > 0 {
		fmt.Fprintf(&b, ", %s s boot", num(o.c.BootSeconds))
	}
	fmt.Fprintf(&b, ", %s → %s, ≈%s", deadlineText(req), instances(o.count), approx(work(o)))
	if o.c.BootSeconds > 0 {
		fmt.Fprintf(&b, " + %s s boot", num(o.c.BootSeconds))
	}
	if o.raised {
		fmt.Fprintf(&b, " (%s needed, raised to min %d)", neededText(o.needed), req.Min)
	}
	fmt.Fprintf(&b, ", $%s", money(o.cost))
	b.WriteString(alternatives(opts, chosen))
	return b.String()
}

// rationaleLate explains the fallback when no candidate meets the deadline.
func rationaleLate(req Request, opts []option, chosen int) string {
	o := opts[chosen]
	var b strings.Builder
	fmt.Fprintf(&b, "%s, %s/min per %s%s", plural(req.Items, "item"), num(o.c.ItemsPerMinute), o.c.InstanceType, source(o.c))
	if o.c.BootSeconds > 0 {
		fmt.Fprintf(&b, ", %s s boot", num(o.c.BootSeconds))
	}
	fmt.Fprintf(&b, ", %s: no candidate meets it within max %d; ", deadlineText(req), req.Max)
	if req.left() <= 0 {
		fmt.Fprintf(&b, "the deadline has passed; ")
	} else if o.noTime {
		fmt.Fprintf(&b, "boot alone takes the deadline; ")
	} else {
		fmt.Fprintf(&b, "%s needed; ", neededText(o.needed))
	}
	fmt.Fprintf(&b, "planning max %s, ≈%s", instances(req.Max), approx(o.estAtMax-o.c.BootSeconds))
	if o.c.BootSeconds > 0 {
		fmt.Fprintf(&b, " + %s s boot", num(o.c.BootSeconds))
	}
	fmt.Fprintf(&b, ", late by ≈%s, $%s", approx(o.estAtMax-req.left().Seconds()), money(o.costAtM))
	b.WriteString(alternatives(opts, chosen))
	return b.String()
}

// deadlineText is "10 min deadline", or, when the job waited, "10 min deadline, 7 min
// left after 3 min waiting".
func deadlineText(req Request) string {
	if req.Waited < 50*time.Millisecond { // would read "0.0 s waiting"
		return span(req.Deadline.Seconds()) + " deadline"
	}
	left := req.left().Seconds()
	if left <= 0 {
		return fmt.Sprintf("%s deadline, none left after %s waiting", span(req.Deadline.Seconds()), approx(req.Waited.Seconds()))
	}
	return fmt.Sprintf("%s deadline, %s left after %s waiting", span(req.Deadline.Seconds()), approx(left), approx(req.Waited.Seconds()))
}

// source is " (the rate's source)" when the candidate names one.
func source(c Candidate) string {
	if c.RateSource == "" {
		return ""
	}
	return " (" + c.RateSource + ")"
}

// alternatives summarises the candidates not chosen.
func alternatives(opts []option, chosen int) string {
	var parts []string
	for i, o := range opts {
		if i == chosen {
			continue
		}
		name := o.c.InstanceType
		if o.c.RateSource != "" {
			name = fmt.Sprintf("%s at %s/min%s", o.c.InstanceType, num(o.c.ItemsPerMinute), source(o.c))
		}
		switch {
		case o.noTime:
			parts = append(parts, fmt.Sprintf("%s: boot %s s leaves no time", name, num(o.c.BootSeconds)))
		case !o.meets:
			parts = append(parts, fmt.Sprintf("%s: %s needed, over max", name, neededText(o.needed)))
		default:
			parts = append(parts, fmt.Sprintf("%s: %s, ≈%s, $%s", name, instances(o.count),
				approx(work(o)), money(o.cost)))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "; also considered " + strings.Join(parts, "; ")
}

// work is the processing time in seconds (estimate minus boot).
func work(o option) float64 { return o.est - o.c.BootSeconds }

func neededText(needed float64) string {
	n := math.Ceil(needed * (1 - relEps))
	if n > 1e9 {
		return "more than 1e9 instances"
	}
	return instances(int(n))
}

func instances(n int) string { return plural(n, "instance") }

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// span renders seconds as "10 min", "1.5 min" or, under a minute, "10 s".
func span(sec float64) string {
	if sec < 60 {
		return num(sec) + " s"
	}
	return num(sec/60) + " min"
}

// approx renders seconds to one decimal: "6.7 min", "10.0 min" or, under a minute, "6.7 s".
func approx(sec float64) string {
	if sec < 60 {
		return num1(sec) + " s"
	}
	return num1(sec/60) + " min"
}

// num renders f with at most 2 decimals and no trailing zeros.
func num(f float64) string {
	return strconv.FormatFloat(math.Round(f*100)/100, 'f', -1, 64)
}

// num1 renders f rounded to 1 decimal, always showing it (6.7, 10.0).
func num1(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }

func money(f float64) string { return strconv.FormatFloat(f, 'f', 4, 64) }
