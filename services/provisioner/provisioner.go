// Package provisioner is Sortie's second stage: it launches each planned fleet and waits for it to run (FleetPlanned → FleetLaunched).
package provisioner

import (
	"context"
	"errors"
	"fmt"
	"strings"

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
	router, err := bus.NewRouter(bus.Config{
		Topology:     cfg.Topology(),
		Service:      bus.Provisioner,
		OnDeadLetter: deps.Rejecter(cfg.Base, bus.Provisioner).OnDeadLetter,
		AWS:          deps.AWS,
		Logger:       deps.Logger,
	})
	if err != nil {
		return fmt.Errorf("provisioner: %w", err)
	}
	h := handler{
		launcher: &launcher{
			stack:          cfg.Prefix,
			ec2:            NewEC2Client(deps.AWS),
			ops:            deps.Ops,
			secret:         cfg.HostKeySecret,
			now:            deps.Now,
			waiterMinDelay: cfg.WaiterMinDelay,
			waiterMaxDelay: cfg.WaiterMaxDelay,
			timeout:        cfg.LaunchTimeout,
		},
		pub:    deps.Publisher,
		ledger: deps.LedgerFor(cfg.Base),
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

// claimer is the ledger call the handler makes: the job's launched stage, claimed before
// launching.
type claimer interface {
	Claim(ctx context.Context, jobID string, stage ledger.Stage) (*ledger.Claim, error)
}

var (
	_ publisher = (*bus.Publisher)(nil)
	_ claimer   = (*ledger.Ledger)(nil)
)

type handler struct {
	launcher *launcher
	pub      publisher
	ledger   claimer
}

// handle decodes a FleetPlanned, claims the job's launched stage in the ledger, launches
// the fleet and publishes FleetLaunched. A duplicate FleetPlanned whose job is launched
// (or being launched by another replica) does nothing.
func (h handler) handle(ctx context.Context, m *bus.Message) error {
	fp, err := events.DecodeFleetPlanned(m.Payload)
	if err != nil {
		return err // wraps events.ErrInvalid: dead-lettered with the reason
	}
	claim, err := h.ledger.Claim(ctx, fp.JobID, ledger.Launched)
	if errors.Is(err, ledger.ErrTaken) {
		bus.Logger(ctx).Debug("duplicate FleetPlanned: nothing to do", "fleet_id", fp.FleetID, "reason", err.Error())
		return nil
	}
	if err != nil {
		return fmt.Errorf("provisioning fleet %s: %w", fp.FleetID, err)
	}
	defer claim.Release(ctx)
	launched, err := h.launcher.launch(claim.Context(), fp)
	if errors.Is(err, errFleetEnded) {
		bus.Logger(ctx).Info("duplicate FleetPlanned for a fleet that has ended: nothing to do", "fleet_id", fp.FleetID, "plan_revision", fp.PlanRevision)
		return nil
	}
	if err != nil {
		return fmt.Errorf("provisioning fleet %s revision %d: %w", fp.FleetID, fp.PlanRevision, err)
	}
	if err := claim.Checkpoint(); err != nil {
		return err
	}
	if err := h.pub.Publish(ctx, launched); err != nil {
		return fmt.Errorf("provisioning fleet %s revision %d: %w", fp.FleetID, fp.PlanRevision, err)
	}
	ids := make([]string, len(launched.Instances))
	for i, in := range launched.Instances {
		ids[i] = in.ID
	}
	if err := claim.Done(ctx, ledger.Fields{"instances": strings.Join(ids, ","), "launched_type": launchedType(launched)}); err != nil {
		bus.Logger(ctx).Error("recording the launch in the ledger", "error", err.Error())
	}
	bus.Logger(ctx).Info("fleet launched", "fleet_id", fp.FleetID, "instances", ids, "host_key", launched.HostKey)
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
