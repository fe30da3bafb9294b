package planner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/hostkey"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/sizing"
)

// Replanning. When an instance of a running job is lost (InstanceLost), the planner sizes
// what is left — the items not yet done, in the time left before the deadline — and plans
// the replacements the instances still running cannot make up for: a FleetPlanned of the
// next plan revision (its own ClientToken, host key and capacity reservation), or, when
// none is needed or none can help, an answer in the ledger saying why. Either way the
// lost instances are covered once (ledger.CoverLost), which the monitor waits for before
// it finishes the job.

// The job's fields the planner records with its first plan, for replanning.
const (
	fieldParams     = "params"      // JSON object
	fieldWork       = "work"        // JSON events.WorkSource
	fieldBestEffort = "best_effort" // "true" or "false"
	fieldItems      = "items"
	fieldLaunched   = "instances" // the first revision's instance ids, comma-separated (the provisioner's)
)

// revCountField is the ledger field holding a replacement revision's planned count.
func revCountField(rev int) string { return "rev" + strconv.Itoa(rev) + "_count" }

// replanFields are what the first plan records for a replan to start from.
func replanFields(job events.JobSubmitted) (ledger.Fields, error) {
	params, err := json.Marshal(job.Params)
	if err != nil {
		return nil, err
	}
	work, err := json.Marshal(job.Work)
	if err != nil {
		return nil, err
	}
	return ledger.Fields{fieldParams: string(params), fieldWork: string(work), fieldBestEffort: strconv.FormatBool(job.BestEffort)}, nil
}

// replanLedger is the ledger calls a replan makes.
type replanLedger interface {
	Get(ctx context.Context, jobID string) (ledger.Record, error)
	Claim(ctx context.Context, jobID string, stage ledger.Stage) (*ledger.Claim, error)
	CoverLost(ctx context.Context, jobID string, ids []string, by string) error
}

var _ replanLedger = (*ledger.Ledger)(nil)

// handleLost replans a job that lost an instance.
func (h handler) handleLost(ctx context.Context, m *bus.Message) error {
	lost, err := events.DecodeInstanceLost(m.Payload)
	if err != nil {
		return err
	}
	log := bus.Logger(ctx).With("fleet_id", lost.FleetID, "instance_id", lost.InstanceID, "cause", lost.Cause)
	rec, err := h.replans.Get(ctx, lost.JobID)
	if err != nil {
		return fmt.Errorf("replanning job %s: %w", lost.JobID, err)
	}
	_, cancelled := rec.Cancelled()
	switch {
	case rec.DoneAt(ledger.Finished) != "" || rec.DoneAt(ledger.Terminated) != "" || cancelled:
		log.Info("instance lost from a job that has ended: nothing to replan")
		return nil
	case rec.LostBy(lost.InstanceID) != "":
		log.Debug("lost instance answered for before", "by", rec.LostBy(lost.InstanceID))
		return nil
	case rec.DoneAt(ledger.Planned) == "":
		// Planned moments ago (published, not yet recorded), or not this stack's job: retried.
		return fmt.Errorf("replanning job %s: the job has no plan in the ledger yet", lost.JobID)
	}
	rev := rec.PlanRevision() + 1
	if rev > events.MaxPlanRevision {
		return h.coverNone(ctx, rec, fmt.Sprintf("no replacement: the job has had %d plans, the most it may", events.MaxPlanRevision))
	}
	claim, err := h.replans.Claim(ctx, lost.JobID, ledger.StageAt(ledger.Planned, rev))
	if errors.Is(err, ledger.ErrTaken) {
		// Another replan of the job is being made or was just made: read again and answer
		// for what it did not cover.
		return fmt.Errorf("replanning job %s: %w", lost.JobID, err)
	}
	if err != nil {
		return fmt.Errorf("replanning job %s: %w", lost.JobID, err)
	}
	defer claim.Release(ctx)
	uncovered := rec.Uncovered()
	plan, why, err := h.planner.replan(ctx, rec, rev, lost)
	if bus.IsPermanent(err) {
		// No retry can plan it: the job goes on with what runs, and says why.
		log.Error("no replacement can be planned", "error", err.Error())
		return h.coverNone(ctx, rec, "cannot be replanned: "+err.Error())
	}
	if err != nil {
		return fmt.Errorf("replanning job %s: %w", lost.JobID, err)
	}
	if plan == nil {
		log.Warn("no replacement planned", "reason", why)
		return h.coverNone(ctx, rec, why)
	}
	if err := claim.Checkpoint(); err != nil {
		return err
	}
	if err := h.pub.Publish(ctx, *plan); err != nil {
		return fmt.Errorf("replanning job %s: %w", lost.JobID, err)
	}
	fields := ledger.Fields{ledger.AttrPlanRevision: rev, revCountField(rev): plan.Count, "rev" + strconv.Itoa(rev) + "_state": ledger.RevPlanned}
	for _, id := range uncovered {
		fields["lostby_"+id] = strconv.Itoa(rev)
	}
	if err := claim.Done(ctx, fields); err != nil {
		return fmt.Errorf("recording replan %d of job %s: %w", rev, lost.JobID, err)
	}
	h.metrics.FleetPlanned()
	log.Info("replacement planned", "plan_revision", rev, "instance_type", plan.InstanceType, "count", plan.Count,
		"replacing", uncovered, "rationale", plan.Rationale)
	return nil
}

// coverNone answers for every lost instance not covered yet: no replacement, and why.
func (h handler) coverNone(ctx context.Context, rec ledger.Record, why string) error {
	if err := h.replans.CoverLost(ctx, rec.JobID, rec.Uncovered(), "none: "+why); err != nil {
		return fmt.Errorf("replanning job %s: %w", rec.JobID, err)
	}
	return nil
}

// replan sizes the replacements for a job that lost instances: nil and why when it needs
// none or none can help. The job is rebuilt from its record (the first plan's fields).
func (p *planner) replan(ctx context.Context, rec ledger.Record, rev int, lost events.InstanceLost) (*events.FleetPlanned, string, error) {
	job, items, err := jobOf(rec)
	if err != nil {
		return nil, "", bus.Permanent(err)
	}
	job.CorrelationID = lost.CorrelationID
	ops := p.ops.Current()
	sel, err := resolve(ops, job, p.secretsBucket)
	if err != nil {
		return nil, "", err
	}
	sel.Candidates = withLearned(ctx, p.rates, ops.Learning.Policy(), job.Profile, sel.Candidates)
	now := p.now()
	left, err := p.remaining(ctx, job, items, rec)
	if err != nil {
		return nil, "", err
	}
	running := survivors(rec)
	if left == 0 {
		return nil, fmt.Sprintf("no work left to replace %s for (%d instances still running)", lost.InstanceID, running), nil
	}
	room := sel.Template.MaxInstances - running
	if room < 1 {
		return nil, fmt.Sprintf("the template's %d instances are all still running", sel.Template.MaxInstances), nil
	}
	res, err := sizing.Plan(sizing.Request{
		Items: left, Deadline: job.Deadline(), Waited: max(now.Sub(job.Time), 0),
		Candidates: sel.Candidates, Min: 1, Max: sel.Template.MaxInstances,
	})
	if err != nil {
		return nil, "", bus.Permanent(fmt.Errorf("sizing: %w", err))
	}
	if !res.MeetsDeadline && !job.BestEffort {
		return nil, "no fleet can finish what is left by the deadline: " + res.Rationale, nil
	}
	count := min(res.Count-running, room)
	if count < 1 {
		return nil, fmt.Sprintf("the %d instances still running can finish the %d items left by the deadline (%d needed)", running, left, res.Count), nil
	}
	timeLeft := job.Time.Add(job.Deadline()).Sub(now).Round(time.Second)
	rationale := fmt.Sprintf("replan %d after %s was lost (%s): %d items left, %s to the deadline; %d × %s needed, %d still running, so %d more. %s",
		rev, lost.InstanceID, lost.Cause, left, timeLeft, res.Count, res.InstanceType, running, count, res.Rationale)
	plan := &events.FleetPlanned{
		Header:           events.NewHeader(job.JobID, job.CorrelationID, now),
		FleetID:          lost.FleetID,
		PlanRevision:     rev,
		Template:         job.Template,
		Profile:          job.Profile,
		Recipe:           job.Recipe,
		Params:           job.Params,
		DeadlineSeconds:  job.DeadlineSeconds,
		SubmittedAt:      job.Time,
		Items:            left,
		InstanceType:     res.InstanceType,
		Count:            count,
		EstimatedSeconds: res.EstimatedSeconds,
		MeetsDeadline:    res.MeetsDeadline,
		Rationale:        truncate(rationale, events.MaxTextBytes),
		PlannedCost:      res.Cost * float64(count) / float64(max(res.Count, 1)),
	}
	if plan.Nonce, err = hostkey.NewNonce(); err != nil {
		return nil, "", err
	}
	return plan, "", nil
}

// jobOf rebuilds the job a record was planned from, with the items the first plan counted.
func jobOf(rec ledger.Record) (events.JobSubmitted, int, error) {
	a := rec.Attrs
	job := events.JobSubmitted{Template: a["template"], Profile: a["profile"], Recipe: a["recipe"]}
	job.JobID = rec.JobID
	var err error
	var errs []error
	if job.DeadlineSeconds, err = strconv.Atoi(a["deadline_seconds"]); err != nil {
		errs = append(errs, fmt.Errorf("deadline_seconds %q", a["deadline_seconds"]))
	}
	if job.Time, err = time.Parse(time.RFC3339Nano, a["submitted_at"]); err != nil {
		errs = append(errs, fmt.Errorf("submitted_at %q", a["submitted_at"]))
	}
	items, err := strconv.Atoi(a[fieldItems])
	if err != nil {
		errs = append(errs, fmt.Errorf("items %q", a[fieldItems]))
	}
	if err := json.Unmarshal([]byte(a[fieldWork]), &job.Work); err != nil {
		errs = append(errs, fmt.Errorf("work %q", a[fieldWork]))
	}
	if s := a[fieldParams]; s != "" && s != "null" {
		if err := json.Unmarshal([]byte(s), &job.Params); err != nil {
			errs = append(errs, fmt.Errorf("params: %w", err))
		}
	}
	job.BestEffort = a[fieldBestEffort] == "true"
	if err := errors.Join(errs...); err != nil {
		return events.JobSubmitted{}, 0, fmt.Errorf("job %s's record cannot be replanned from: %w", rec.JobID, err)
	}
	return job, items, nil
}

// remaining is the work left: a queue's depth now, or for a count or an S3 prefix the
// items the first plan counted less the tasks reported done.
func (p *planner) remaining(ctx context.Context, job events.JobSubmitted, items int, rec ledger.Record) (int, error) {
	if job.Work.Queue != "" {
		return queueDepth(ctx, p.queues, job.Work.Queue)
	}
	return max(items-rec.Tasks(events.OutcomeSucceeded), 0), nil
}

// survivors counts the instances still working on the job: the first plan's and the
// replacements' that were not lost, and those of replacement revisions still on their way.
func survivors(rec ledger.Record) int {
	lost := rec.Lost()
	n := 0
	for _, id := range strings.Split(rec.Attrs[fieldLaunched], ",") {
		if _, gone := lost[id]; id != "" && !gone {
			n++
		}
	}
	insts, _ := rec.RevisionInstances()
	for _, in := range insts {
		if _, gone := lost[in.ID]; in.OK && !gone {
			n++
		}
	}
	for rev := 2; rev <= rec.PlanRevision(); rev++ {
		switch s := rec.RevisionState(rev); {
		case s == ledger.RevBootstrapped, strings.HasPrefix(s, ledger.RevFailed):
		default:
			c, _ := strconv.Atoi(rec.Attrs[revCountField(rev)])
			n += c
		}
	}
	return n
}
