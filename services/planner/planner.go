// Package planner is Sortie's first stage: it sizes a fleet for each submitted job (JobSubmitted → FleetPlanned).
package planner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/telemetry"
)

// Run consumes JobSubmitted until ctx is cancelled, publishing a FleetPlanned for every
// valid job. Invalid jobs (undecodable, unknown names, bad parameters, no work, a work
// source that does not exist) go to the planner queue's DLQ with the reason.
func Run(ctx context.Context, cfg Config, deps service.Deps) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	deps = deps.WithDefaults()
	if deps.Ops == nil || deps.Publisher == nil {
		return errors.New("planner: deps need an ops config and a publisher")
	}
	router, err := bus.NewRouter(deps.Bus(bus.Config{
		Topology:     cfg.Topology(),
		Service:      bus.Planner,
		OnDeadLetter: deps.Rejecter(cfg.Base, bus.Planner).OnDeadLetter,
		AWS:          deps.AWS,
		Logger:       deps.Logger,
	}))
	if err != nil {
		return fmt.Errorf("planner: %w", err)
	}
	h := handler{
		planner: &planner{
			ops:           deps.Ops,
			secretsBucket: cfg.Topology().SecretsBucketName(),
			queues:        sqs.NewFromConfig(deps.AWS),
			objects:       s3.NewFromConfig(deps.AWS, awsx.S3Options(deps.AWS)),
			now:           deps.Now,
			rates:         deps.LedgerFor(cfg.Base),
		},
		pub:     deps.Publisher,
		metrics: deps.Telemetry,
		ledger:  deps.LedgerFor(cfg.Base),
		replans: deps.LedgerFor(cfg.Base),
		reuse:   deps.Rejecter(cfg.Base, bus.Planner),
	}
	router.Handle(bus.JobSubmitted, h.handle)
	router.Handle(bus.InstanceLost, h.handleLost)
	return router.Run(ctx)
}

// publisher is the call the handler makes on the bus.
type publisher interface {
	Publish(ctx context.Context, e events.Event) error
}

// claimer is the ledger calls the handler makes: the job's submission (a job id taken by
// an earlier, different job is refused) and its planned stage, claimed before planning.
type claimer interface {
	Submit(ctx context.Context, jobID, digest string) (ledger.Submission, error)
	Claim(ctx context.Context, jobID string, stage ledger.Stage) (*ledger.Claim, error)
}

// reuseAnswerer answers a JobSubmitted that reuses a job id.
type reuseAnswerer interface {
	RejectReuse(ctx context.Context, job events.JobSubmitted, digest string, earlier ledger.Record) error
}

var (
	_ publisher     = (*bus.Publisher)(nil)
	_ claimer       = (*ledger.Ledger)(nil)
	_ reuseAnswerer = ledger.Rejecter{}
)

type handler struct {
	planner *planner
	pub     publisher
	ledger  claimer
	replans replanLedger
	reuse   reuseAnswerer
	metrics *telemetry.Telemetry // counts the fleets planned; nil counts nothing
}

// handle decodes a JobSubmitted, claims the job's planned stage in the ledger, plans its
// fleet and publishes the plan. A duplicate or redelivered JobSubmitted whose job is
// planned (or being planned) does nothing.
func (h handler) handle(ctx context.Context, m *bus.Message) error {
	job, err := events.DecodeJobSubmitted(m.Payload)
	if err != nil {
		return err // wraps events.ErrInvalid: dead-lettered with the reason
	}
	sum := sha256.Sum256(m.Payload)
	digest := hex.EncodeToString(sum[:])
	sub, err := h.ledger.Submit(ctx, job.JobID, digest)
	if err != nil {
		return fmt.Errorf("planning job %s: %w", job.JobID, err)
	}
	if sub.Reused {
		bus.Logger(ctx).Warn("job id reused: answering with the earlier job's outcome", "reason", ledger.ReuseReason(job.JobID, sub.Earlier))
		if err := h.reuse.RejectReuse(ctx, job, digest, sub.Earlier); err != nil {
			return fmt.Errorf("planning job %s: %w", job.JobID, err)
		}
		return nil
	}
	claim, err := h.ledger.Claim(ctx, job.JobID, ledger.Planned)
	if errors.Is(err, ledger.ErrTaken) {
		bus.Logger(ctx).Debug("duplicate JobSubmitted: nothing to do", "reason", err.Error())
		return nil
	}
	if err != nil {
		return fmt.Errorf("planning job %s: %w", job.JobID, err)
	}
	defer claim.Release(ctx)
	plan, err := h.planner.plan(ctx, job)
	if err != nil {
		return fmt.Errorf("planning job %s: %w", job.JobID, err)
	}
	if err := claim.Checkpoint(); err != nil {
		return err
	}
	if err := h.pub.Publish(ctx, plan); err != nil {
		return fmt.Errorf("planning job %s: %w", job.JobID, err)
	}
	fields, err := replanFields(job)
	if err != nil {
		return fmt.Errorf("planning job %s: %w", job.JobID, err)
	}
	maps.Copy(fields, ledger.Fields{
		"fleet_id": plan.FleetID, "template": plan.Template, "profile": plan.Profile, "recipe": plan.Recipe,
		"items": plan.Items, "instance_type": plan.InstanceType, "count": plan.Count,
		"submitted_at": plan.SubmittedAt, "deadline_seconds": plan.DeadlineSeconds,
	})
	if err := claim.Done(ctx, fields); err != nil {
		bus.Logger(ctx).Error("recording the plan in the ledger", "error", err.Error())
	}
	h.metrics.FleetPlanned()
	bus.Logger(ctx).Info("fleet planned", "items", plan.Items, "instance_type", plan.InstanceType,
		"count", plan.Count, "meets_deadline", plan.MeetsDeadline, "rationale", plan.Rationale)
	return nil
}
