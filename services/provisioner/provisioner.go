// Package provisioner is Sortie's second stage: it launches each planned fleet and waits for it to run (FleetPlanned → FleetLaunched).
package provisioner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/service"
)

// Run consumes FleetPlanned until ctx is cancelled: it launches each fleet (once, however
// often the plan is delivered), waits for it to be running and publishes FleetLaunched.
func Run(ctx context.Context, cfg Config, deps service.Deps) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("provisioner config: %w", err)
	}
	deps = deps.WithDefaults()
	if deps.Ops == nil || deps.Publisher == nil {
		return errors.New("provisioner: deps need an ops config and a publisher")
	}
	router, err := bus.NewRouter(deps.Bus(bus.Config{
		Topology:     cfg.Topology(),
		Service:      bus.Provisioner,
		OnDeadLetter: deps.Rejecter(cfg.Base, bus.Provisioner).OnDeadLetter,
		AWS:          deps.AWS,
		Logger:       deps.Logger,
	}))
	if err != nil {
		return fmt.Errorf("provisioner: %w", err)
	}
	h := handler{
		launcher: &launcher{
			stack:          cfg.Prefix,
			local:          cfg.LocalMode,
			ec2:            NewEC2Client(deps.AWS),
			ops:            deps.Ops,
			secret:         cfg.HostKeySecret,
			now:            deps.Now,
			waiterMinDelay: cfg.WaiterMinDelay,
			waiterMaxDelay: cfg.WaiterMaxDelay,
			timeout:        cfg.LaunchTimeout,
			metrics:        deps.Telemetry,
			rates:          deps.LedgerFor(cfg.Base),
		},
		pub:     deps.Publisher,
		ledger:  deps.LedgerFor(cfg.Base),
		cancels: deps.Rejecter(cfg.Base, bus.Provisioner),
	}
	router.Handle(bus.FleetPlanned, h.handle)
	return router.Run(ctx)
}

// NewEC2Client returns the EC2 client the provisioner uses: the SDK's standard retries,
// except for capacity errors, which EC2 sends as server errors (HTTP 500) that the SDK
// would retry on the same type and subnet; the provisioner falls back at once instead.
func NewEC2Client(cfg aws.Config) *ec2.Client {
	return ec2.NewFromConfig(cfg, func(o *ec2.Options) {
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.Retryables = append([]retry.IsErrorRetryable{retry.IsErrorRetryableFunc(func(err error) aws.Ternary {
				if awsx.IsCapacity(err) {
					return aws.FalseTernary
				}
				return aws.UnknownTernary
			})}, so.Retryables...)
		})
	})
}

// publisher is the call the handler makes on the bus.
type publisher interface {
	Publish(ctx context.Context, e events.Event) error
}

// claimer is the ledger calls the handler makes: the plan revision's launched stage,
// claimed before launching, the fleet's capacity reservation against the stack's caps,
// and a replacement revision's state.
type claimer interface {
	Claim(ctx context.Context, jobID string, stage ledger.Stage) (*ledger.Claim, error)
	Reserve(ctx context.Context, jobID string, r ledger.Reservation, lim ledger.Limits) (bool, error)
	Release(ctx context.Context, jobID string) error
	Note(ctx context.Context, jobID string, fields ledger.Fields) error
	Get(ctx context.Context, jobID string) (ledger.Record, error)
	SetRevisionState(ctx context.Context, jobID string, rev int, state string) error
}

// canceller answers a job an operator cancelled before its launch with its terminal event.
type canceller interface {
	AnswerCancel(ctx context.Context, jobID, correlationID string, c ledger.Cancel) error
}

var (
	_ publisher = (*bus.Publisher)(nil)
	_ claimer   = (*ledger.Ledger)(nil)
	_ canceller = ledger.Rejecter{}
)

type handler struct {
	launcher *launcher
	pub      publisher
	ledger   claimer
	cancels  canceller
	// poll is how often a fleet waiting for capacity tries again (default 1 s).
	poll time.Duration
}

// handle decodes a FleetPlanned, claims its revision's launched stage in the ledger,
// launches the fleet and publishes FleetLaunched. A duplicate FleetPlanned whose revision
// is launched (or being launched by another replica) does nothing.
//
// A plan of revision n > 1 replaces lost instances of a running job: it claims
// "launched@n", reserves capacity under the revision's own id, and records the
// revision's state in the ledger. Such a replacement that cannot be launched does not end
// the job (the first revision's instances still run and may finish it): its failure is
// recorded as the revision's state and the message acknowledged, with no terminal event;
// so is one whose last delivery (the queue would dead-letter it next) fails.
func (h handler) handle(ctx context.Context, m *bus.Message) error {
	fp, err := events.DecodeFleetPlanned(m.Payload)
	if err != nil {
		return err // wraps events.ErrInvalid: dead-lettered with the reason
	}
	rev := fp.PlanRevision
	claim, err := h.ledger.Claim(ctx, fp.JobID, ledger.StageAt(ledger.Launched, rev))
	if errors.Is(err, ledger.ErrTaken) {
		bus.Logger(ctx).Debug("duplicate FleetPlanned: nothing to do", "fleet_id", fp.FleetID, "plan_revision", rev, "reason", err.Error())
		return nil
	}
	if err != nil {
		return fmt.Errorf("provisioning fleet %s revision %d: %w", fp.FleetID, rev, err)
	}
	defer claim.Release(ctx)
	if c, ok := h.cancelled(ctx, fp.JobID); ok {
		return h.answerCancel(ctx, fp, c)
	}
	if rev > 1 && h.finished(ctx, fp.JobID) {
		// Its instances would outlive the job until their lease ran out.
		return h.replacementFailed(ctx, fp, claim, errors.New("the job finished before its replacement was launched"))
	}
	launched, err := h.launchWithin(claim.Context(), fp)
	var ce *cancelledError
	if errors.As(err, &ce) {
		return h.answerCancel(ctx, fp, ce.c)
	}
	if errors.Is(err, errFleetEnded) || bus.IsPermanent(err) {
		if rerr := h.ledger.Release(ctx, ledger.ReservationID(fp.JobID, rev)); rerr != nil {
			bus.Logger(ctx).Error("releasing the fleet's capacity", "plan_revision", rev, "error", rerr.Error())
		}
	}
	if errors.Is(err, errFleetEnded) {
		bus.Logger(ctx).Info("duplicate FleetPlanned for a fleet that has ended: nothing to do", "fleet_id", fp.FleetID, "plan_revision", rev)
		if rev > 1 {
			h.replacementEnded(ctx, fp)
		}
		return nil
	}
	if rev > 1 && err != nil && !bus.IsPermanent(err) && lastDelivery(m) {
		// Its queue would dead-letter it next, which ends a job: a replacement gives up
		// here instead, and gives its capacity back.
		if rerr := h.ledger.Release(ctx, ledger.ReservationID(fp.JobID, rev)); rerr != nil {
			bus.Logger(ctx).Error("releasing the fleet's capacity", "plan_revision", rev, "error", rerr.Error())
		}
		return h.replacementFailed(ctx, fp, claim, fmt.Errorf("gave up after %d deliveries: %w", m.ReceiveCount, err))
	}
	if rev > 1 && bus.IsPermanent(err) {
		return h.replacementFailed(ctx, fp, claim, err)
	}
	if err != nil {
		return fmt.Errorf("provisioning fleet %s revision %d: %w", fp.FleetID, rev, err)
	}
	if err := claim.Checkpoint(); err != nil {
		return err
	}
	if rev > 1 {
		// Recorded before the publish: once FleetLaunched is out, the revision goes on to
		// bootstrapped, which this must never overwrite. A publish that fails is retried
		// (the revision is launched; only its event is missing).
		if err := h.ledger.SetRevisionState(ctx, fp.JobID, rev, ledger.RevLaunched); err != nil {
			return fmt.Errorf("provisioning fleet %s revision %d: %w", fp.FleetID, rev, err)
		}
	}
	if err := h.pub.Publish(ctx, launched); err != nil {
		err = fmt.Errorf("provisioning fleet %s revision %d: %w", fp.FleetID, rev, err)
		if rev > 1 && lastDelivery(m) { // its instances are reaped with the job's
			return h.replacementFailed(ctx, fp, claim, fmt.Errorf("gave up after %d deliveries: %w", m.ReceiveCount, err))
		}
		return err
	}
	ids := make([]string, len(launched.Instances))
	for i, in := range launched.Instances {
		ids[i] = in.ID
	}
	if err := claim.Done(ctx, launchFields(rev, ids, launchedType(launched))); err != nil {
		bus.Logger(ctx).Error("recording the launch in the ledger", "error", err.Error())
	}
	bus.Logger(ctx).Info("fleet launched", "fleet_id", fp.FleetID, "plan_revision", rev, "instances", ids, "host_key", launched.HostKey)
	return nil
}

// launchFields are what the ledger records of a launch: "instances" and "launched_type"
// for the first revision, "rev<n>_instances_launched" and "rev<n>_launched_type" for a
// replacement, which must not overwrite the first's.
func launchFields(rev int, ids []string, instanceType string) ledger.Fields {
	if rev <= 1 {
		return ledger.Fields{"instances": strings.Join(ids, ","), "launched_type": instanceType}
	}
	p := "rev" + strconv.Itoa(rev) + "_"
	return ledger.Fields{p + "instances_launched": strings.Join(ids, ","), p + "launched_type": instanceType}
}

// lastDelivery says whether m is its queue's last delivery: failing it dead-letters it.
func lastDelivery(m *bus.Message) bool { return m.ReceiveCount >= bus.MaxReceiveCount }

// replacementFailed records that a replacement revision could not be launched (err says
// why: no capacity within the deadline, a plan the template refuses, ...), with its
// capacity released already, and acknowledges the plan: the job goes on with the
// instances it has. The stage is recorded done, so a duplicate plan does not try again.
func (h handler) replacementFailed(ctx context.Context, fp events.FleetPlanned, claim *ledger.Claim, cause error) error {
	why := cause.Error()
	bus.Logger(ctx).Warn("replacement fleet not launched: the job goes on without it", "fleet_id", fp.FleetID, "plan_revision", fp.PlanRevision, "reason", why)
	if err := h.ledger.SetRevisionState(ctx, fp.JobID, fp.PlanRevision, ledger.RevFailed+": "+why); err != nil {
		return fmt.Errorf("provisioning fleet %s revision %d: %w", fp.FleetID, fp.PlanRevision, err)
	}
	if err := claim.Done(ctx, ledger.Fields{"rev" + strconv.Itoa(fp.PlanRevision) + "_launch_failed": why}); err != nil {
		bus.Logger(ctx).Error("recording the failed launch in the ledger", "error", err.Error())
	}
	return nil
}

// replacementEnded answers a replacement revision whose instances were launched by an
// earlier delivery and are all gone: unless the revision reached bootstrapped (or failed),
// nothing will ever bootstrap it, so it is recorded failed and the job stops waiting for it.
func (h handler) replacementEnded(ctx context.Context, fp events.FleetPlanned) {
	rec, err := h.ledger.Get(ctx, fp.JobID)
	if err != nil {
		bus.Logger(ctx).Warn("reading the job's record", "error", err.Error())
		return
	}
	if s := rec.RevisionState(fp.PlanRevision); s == ledger.RevBootstrapped || strings.HasPrefix(s, ledger.RevFailed) {
		return
	}
	if err := h.ledger.SetRevisionState(ctx, fp.JobID, fp.PlanRevision, ledger.RevFailed+": "+errFleetEnded.Error()); err != nil {
		bus.Logger(ctx).Error("recording the replacement revision failed", "error", err.Error())
	}
}

// cancelled reads whether an operator cancelled the job. A record that cannot be read is
// not a cancel (the monitor ends a cancelled job that was launched).
func (h handler) cancelled(ctx context.Context, jobID string) (ledger.Cancel, bool) {
	rec, err := h.ledger.Get(ctx, jobID)
	if err != nil {
		bus.Logger(ctx).Warn("reading the job's record for a cancel", "error", err.Error())
		return ledger.Cancel{}, false
	}
	return rec.Cancelled()
}

// finished reads whether the job's JobFinished is out. A record that cannot be read is not
// finished (the launch goes on; the sweep reaps what outlives its job).
func (h handler) finished(ctx context.Context, jobID string) bool {
	rec, err := h.ledger.Get(ctx, jobID)
	if err != nil {
		bus.Logger(ctx).Warn("reading the job's record before a replacement launch", "error", err.Error())
		return false
	}
	return rec.DoneAt(ledger.Finished) != "" || rec.DoneAt(ledger.Terminated) != ""
}

// cancelledError stops a wait for capacity: the job was cancelled.
type cancelledError struct{ c ledger.Cancel }

func (e *cancelledError) Error() string { return e.c.Text() }

// answerCancel does not launch a cancelled job: it gives back any capacity the plan
// revision reserved and, for a first plan, ends the job with a FleetTerminated whose
// outcome is cancelled. A replacement revision publishes nothing (the monitor ends a
// cancelled job that runs); its state records the cancel.
func (h handler) answerCancel(ctx context.Context, fp events.FleetPlanned, c ledger.Cancel) error {
	bus.Logger(ctx).Info("job cancelled before its launch: not launching", "fleet_id", fp.FleetID, "plan_revision", fp.PlanRevision, "cancelled_by", c.By, "reason", c.Reason)
	if err := h.ledger.Release(ctx, ledger.ReservationID(fp.JobID, fp.PlanRevision)); err != nil {
		return fmt.Errorf("provisioning fleet %s: %w", fp.FleetID, err)
	}
	if fp.PlanRevision > 1 {
		if err := h.ledger.SetRevisionState(ctx, fp.JobID, fp.PlanRevision, ledger.RevFailed+": "+c.Text()); err != nil {
			return fmt.Errorf("provisioning fleet %s revision %d: %w", fp.FleetID, fp.PlanRevision, err)
		}
		return nil
	}
	if err := h.cancels.AnswerCancel(ctx, fp.JobID, fp.CorrelationID, c); err != nil {
		return fmt.Errorf("provisioning fleet %s: %w", fp.FleetID, err)
	}
	return nil
}

// launchedType is the instance type the fleet was launched with (fallback may have changed
// it from the plan's).
func launchedType(e events.FleetLaunched) string {
	if len(e.Instances) == 0 {
		return ""
	}
	return e.Instances[0].InstanceType
}

// launchWithin reserves the fleet's capacity against the stack's caps, then launches it.
// While the fleet does not fit the caps, or EC2 answers with an account limit
// (InstanceLimitExceeded, VcpuLimitExceeded: other instances must end first, so no other
// type is tried), it waits, noting so in the ledger (state "waiting for capacity"), and
// tries again every poll; once the fleet could no longer meet its deadline if it started
// now, the job is rejected (a permanent error: dead-lettered, and answered; for a
// replacement revision, recorded as the revision's failure). Each revision reserves under
// its own id (ledger.ReservationID).
func (h handler) launchWithin(ctx context.Context, fp events.FleetPlanned) (events.FleetLaunched, error) {
	ops := h.launcher.ops.Current() // one configuration for the whole wait
	caps := ops.Caps
	poll := cmp.Or(h.poll, time.Second)
	log := bus.Logger(ctx).With("fleet_id", fp.FleetID)
	var since time.Time
	wait := func(why string) error {
		now := h.launcher.now()
		if since.IsZero() {
			since = now
			log.Info("waiting for capacity", "reason", why, "deadline", fp.DeadlineAt())
			if err := h.ledger.Note(ctx, fp.JobID, waitFields(fp.PlanRevision, why, now)); err != nil {
				log.Warn("noting the wait in the ledger", "error", err.Error())
			}
		}
		estimate := time.Duration(fp.EstimatedSeconds * float64(time.Second))
		if now.Add(poll).Add(estimate).After(fp.DeadlineAt()) {
			return bus.Permanent(fmt.Errorf("no capacity within its deadline: waited %s for %s; %d instances need %s from %s on, the deadline is %s",
				now.Sub(since).Round(time.Second), why, fp.Count, estimate, now.UTC().Format(time.RFC3339), fp.DeadlineAt().UTC().Format(time.RFC3339)))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
		if c, ok := h.cancelled(ctx, fp.JobID); ok {
			return &cancelledError{c: c}
		}
		return nil
	}
	if caps.Any() {
		t, err := ops.Template(fp.Template)
		if err != nil {
			return events.FleetLaunched{}, bus.Permanent(err)
		}
		r := ledger.Reservation{Instances: fp.Count, VCPUs: caps.FleetVCPUs(t, fp.Count), Template: fp.Template}
		lim := ledger.Limits{Instances: caps.MaxInstances, VCPUs: caps.MaxVCPUs, TemplateInstances: caps.Templates[fp.Template]}
		for {
			ok, err := h.ledger.Reserve(ctx, ledger.ReservationID(fp.JobID, fp.PlanRevision), r, lim)
			if errors.Is(err, ledger.ErrNeverFits) {
				return events.FleetLaunched{}, bus.Permanent(err)
			}
			if err != nil {
				return events.FleetLaunched{}, err
			}
			if ok {
				break
			}
			if err := wait(fmt.Sprintf("the stack's caps (%s)", caps)); err != nil {
				return events.FleetLaunched{}, err
			}
		}
	}
	for {
		launched, err := h.launcher.launch(ctx, fp)
		if !awsx.IsQuota(err) {
			return launched, err
		}
		if err := wait("the account's EC2 quota: " + awsx.ErrorCode(err)); err != nil {
			return events.FleetLaunched{}, err
		}
	}
}

// waitFields note a wait for capacity: "waiting_for_capacity" and "waiting_since" for a
// first plan (`sortie status` shows them), "rev<n>_waiting_for_capacity" and
// "rev<n>_waiting_since" for a replacement, which the job's own wait must not be confused
// with.
func waitFields(rev int, why string, since time.Time) ledger.Fields {
	if rev <= 1 {
		return ledger.Fields{"waiting_for_capacity": why, "waiting_since": since}
	}
	p := "rev" + strconv.Itoa(rev) + "_"
	return ledger.Fields{p + "waiting_for_capacity": why, p + "waiting_since": since}
}
