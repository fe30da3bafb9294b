// Package provisioner is Sortie's second stage: it launches each planned fleet and waits for it to run (FleetPlanned → FleetLaunched).
package provisioner

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
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
		Topology: cfg.Topology(),
		Service:  bus.Provisioner,
		AWS:      deps.AWS,
		Logger:   deps.Logger,
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
		},
		pub: deps.Publisher,
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

var _ publisher = (*bus.Publisher)(nil)

type handler struct {
	launcher *launcher
	pub      publisher
}

// handle decodes a FleetPlanned, launches the fleet and publishes FleetLaunched.
func (h handler) handle(ctx context.Context, m *bus.Message) error {
	fp, err := events.DecodeFleetPlanned(m.Payload)
	if err != nil {
		return err // wraps events.ErrInvalid: dead-lettered with the reason
	}
	launched, err := h.launcher.launch(ctx, fp)
	if errors.Is(err, errFleetEnded) {
		bus.Logger(ctx).Info("duplicate FleetPlanned for a fleet that has ended: nothing to do", "fleet_id", fp.FleetID, "plan_revision", fp.PlanRevision)
		return nil
	}
	if err != nil {
		return fmt.Errorf("provisioning fleet %s revision %d: %w", fp.FleetID, fp.PlanRevision, err)
	}
	if err := h.pub.Publish(ctx, launched); err != nil {
		return fmt.Errorf("provisioning fleet %s revision %d: %w", fp.FleetID, fp.PlanRevision, err)
	}
	ids := make([]string, len(launched.Instances))
	for i, in := range launched.Instances {
		ids[i] = in.ID
	}
	bus.Logger(ctx).Info("fleet launched", "fleet_id", fp.FleetID, "instances", ids, "host_key", launched.HostKey)
	return nil
}
