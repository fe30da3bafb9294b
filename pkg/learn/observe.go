package learn

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sortie-fleet/sortie/pkg/events"
)

// Job is what Sortie knows of a finished job that a rate sample is measured from.
type Job struct {
	Outcome        string // the JobFinished's outcome
	Profile        string // the plan's capacity profile
	Items          int    // the plan's work items
	TasksSucceeded int    // tasks reported succeeded (the ledger's exact count)
	TasksFailed    int
	// Types are the fleet's instances' types, one per instance, as EC2 describes them.
	Types []string
	// Launched are the instances' launch times, and Stopped when each stopped running
	// (zero while it runs), one per instance.
	Launched, Stopped []time.Time
	// Revisions is the job's plan revisions: 1 (or 0, unknown) unless lost instances were
	// replaced by a later plan.
	Revisions int
	// BootstrapFailed is how many of the fleet's instances the bootstrapper could not start.
	BootstrapFailed int
	// Start is when the fleet was bootstrapped (its workloads started: the ledger's
	// bootstrapped stage), End when the job finished (JobFinished's time: the workloads had
	// exited, or the monitor's check found them so).
	Start, End time.Time
}

// Sample is one observed rate.
type Sample struct {
	Profile      string
	InstanceType string
	Rate         float64 // items per instance-minute
	Instances    int
	Window       time.Duration
}

// ErrNoSample is wrapped by every reason a job gives no sample.
var ErrNoSample = errors.New("no rate sample")

// Observe measures a job's rate: its items over the instance-minutes its fleet worked,
// rate = items / (instances × (End − Start) in minutes), the quantity sizing plans with
// (boot time is the profile's and is not in the window). Only a job whose number is
// meaningful gives one: it succeeded (every item was done), reported at least one
// succeeded task and none failed, was never replanned, ran on one instance type, every
// instance bootstrapped,
// none launched after the start nor stopped before the end (a lost or replaced instance
// makes the instance-minutes other than instances × window), and the window is positive. Any other job returns an error
// wrapping ErrNoSample that says why.
func Observe(j Job) (Sample, error) {
	no := func(format string, args ...any) (Sample, error) {
		return Sample{}, fmt.Errorf("%w: %s", ErrNoSample, fmt.Sprintf(format, args...))
	}
	switch {
	case j.Outcome != events.OutcomeSucceeded:
		return no("the job %s", or(j.Outcome, "has no outcome"))
	case j.Profile == "":
		return no("the ledger has no profile for the job")
	case j.Items < 1:
		return no("the ledger has no work items for the job")
	case j.TasksSucceeded < 1:
		return no("no task reported succeeded")
	case j.TasksFailed > 0:
		return no("%d tasks failed", j.TasksFailed)
	case len(j.Types) == 0:
		return no("no instance")
	case j.Revisions > 1:
		return no("the job was replanned (revision %d): lost instances were replaced", j.Revisions)
	case j.BootstrapFailed > 0:
		return no("%d instances were not bootstrapped", j.BootstrapFailed)
	case j.Start.IsZero() || j.End.IsZero():
		return no("the fleet's bootstrap or finish time is unknown")
	case !j.End.After(j.Start):
		return no("the job finished (%s) before its fleet was bootstrapped (%s)", j.End.UTC().Format(time.RFC3339Nano), j.Start.UTC().Format(time.RFC3339Nano))
	}
	for _, t := range j.Types {
		if t != j.Types[0] {
			s := slices.Clone(j.Types)
			slices.Sort(s)
			return no("the fleet mixes instance types (%v)", slices.Compact(s))
		}
	}
	if j.Types[0] == "" {
		return no("an instance has no type")
	}
	for _, at := range j.Launched {
		if at.After(j.Start) {
			return no("an instance was launched after the fleet was bootstrapped (a replacement)")
		}
	}
	for _, at := range j.Stopped {
		// EC2 states a termination in whole seconds: within End's second is not before it.
		if !at.IsZero() && at.Before(j.End.Truncate(time.Second)) {
			return no("an instance stopped before the job finished (lost)")
		}
	}
	window := j.End.Sub(j.Start)
	rate := float64(j.Items) / (float64(len(j.Types)) * window.Minutes())
	if err := CheckSample(rate); err != nil {
		return no("%v", err)
	}
	return Sample{Profile: j.Profile, InstanceType: j.Types[0], Rate: rate, Instances: len(j.Types), Window: window}, nil
}

func or(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}
