// Package planner is Sortie's first stage: it sizes a fleet for each submitted job (JobSubmitted → FleetPlanned).
package planner

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
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
		Topology: cfg.Topology(),
		Service:  bus.Planner,
		AWS:      deps.AWS,
		Logger:   deps.Logger,
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
		},
		pub:     deps.Publisher,
		metrics: deps.Telemetry,
	}
	router.Handle(bus.JobSubmitted, h.handle)
	return router.Run(ctx)
}

// publisher is the call the handler makes on the bus.
type publisher interface {
	Publish(ctx context.Context, e events.Event) error
}

var _ publisher = (*bus.Publisher)(nil)

type handler struct {
	planner *planner
	pub     publisher
	metrics *telemetry.Telemetry // counts the fleets planned; nil counts nothing
}

// handle decodes a JobSubmitted, plans its fleet and publishes the plan.
func (h handler) handle(ctx context.Context, m *bus.Message) error {
	job, err := events.DecodeJobSubmitted(m.Payload)
	if err != nil {
		return err // wraps events.ErrInvalid: dead-lettered with the reason
	}
	plan, err := h.planner.plan(ctx, job)
	if err != nil {
		return fmt.Errorf("planning job %s: %w", job.JobID, err)
	}
	if err := h.pub.Publish(ctx, plan); err != nil {
		return fmt.Errorf("planning job %s: %w", job.JobID, err)
	}
	h.metrics.FleetPlanned()
	bus.Logger(ctx).Info("fleet planned", "items", plan.Items, "instance_type", plan.InstanceType,
		"count", plan.Count, "meets_deadline", plan.MeetsDeadline, "rationale", plan.Rationale)
	return nil
}
