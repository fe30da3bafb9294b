package reaper

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cost"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/learn"
	"github.com/sortie-fleet/sortie/pkg/ledger"
)

// rateLearner is the ledger calls the reaper makes to learn a job's rate: the job's
// sample's conditional write.
type rateLearner interface {
	Learn(ctx context.Context, jobID string, s learn.Sample, alpha float64) (ledger.Recorded, error)
}

var _ rateLearner = (*ledger.Ledger)(nil)

// learnRate records the finished job's observed rate (learn.Observe: items per
// instance-minute between its fleet's bootstrap and its end) in the ledger's estimate of
// its profile on its instance type, once per job however often this runs. The inputs are
// the ledger's record as read after the reap (profile, items, when the fleet was
// bootstrapped and whether every instance was), JobFinished (outcome, task counts, the end)
// and the instances as the reap last described them (each one's type, launch and end). Learning is best effort: a job that gives no sample, or a sample that
// cannot be written, is logged and the job's end goes on.
func (s *stage) learnRate(ctx context.Context, ev events.JobFinished, rec ledger.Record, insts []ec2types.Instance) {
	if s.learner == nil {
		return
	}
	log := bus.Logger(ctx).With("fleet_id", ev.FleetID)
	sample, err := learn.Observe(observedJob(rec, ev, insts, s.deps.Now()))
	if errors.Is(err, learn.ErrNoSample) {
		log.Info("no rate sample from this job", "reason", err.Error())
		return
	}
	alpha := s.deps.Ops.Current().Learning.WithDefaults().Alpha
	r, err := s.learner.Learn(ctx, ev.JobID, sample, alpha)
	if err != nil {
		log.Warn("rate not learned", "error", err.Error())
		return
	}
	log.Info("rate learned", "profile", sample.Profile, "instance_type", sample.InstanceType,
		"rate", sample.Rate, "instances", sample.Instances, "window", sample.Window.String(), "counted", r.Counted,
		"mean", r.Estimate.Mean, "spread", r.Estimate.Spread(), "samples", r.Estimate.Samples)
}

// observedJob gathers what learn.Observe measures a job by.
func observedJob(rec ledger.Record, ev events.JobFinished, insts []ec2types.Instance, now time.Time) learn.Job {
	atoi := func(k string) int { n, _ := strconv.Atoi(rec.Attrs[k]); return n }
	j := learn.Job{
		Outcome:         ev.Outcome,
		Profile:         rec.Attrs["profile"],
		Items:           atoi("items"),
		TasksSucceeded:  max(ev.TasksSucceeded, rec.Tasks(events.OutcomeSucceeded)),
		TasksFailed:     max(ev.TasksFailed, rec.Tasks(events.OutcomeFailed)),
		Revisions:       atoi(ledger.AttrPlanRevision),
		BootstrapFailed: atoi("bootstrapped_failed"),
		End:             ev.Time,
	}
	if t, err := time.Parse(time.RFC3339Nano, rec.DoneAt(ledger.Bootstrapped)); err == nil {
		j.Start = t
	}
	for _, in := range insts {
		j.Types = append(j.Types, string(in.InstanceType))
		j.Launched = append(j.Launched, aws.ToTime(in.LaunchTime))
		var stopped time.Time
		if st := stateOf(in); st != ec2types.InstanceStateNameRunning && st != ec2types.InstanceStateNamePending {
			stopped = cost.Ended(in, now)
		}
		j.Stopped = append(j.Stopped, stopped)
	}
	return j
}
