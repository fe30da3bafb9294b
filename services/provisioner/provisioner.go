// Package provisioner is Sortie's second stage: it launches each planned fleet and waits for it to run (FleetPlanned → FleetLaunched).
package provisioner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
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

// claimer is the ledger calls the handler makes: the job's launched stage, claimed before
// launching, and the fleet's capacity reservation against the stack's caps.
type claimer interface {
	Claim(ctx context.Context, jobID string, stage ledger.Stage) (*ledger.Claim, error)
	Reserve(ctx context.Context, jobID string, r ledger.Reservation, lim ledger.Limits) (bool, error)
	Release(ctx context.Context, jobID string) error
	Note(ctx context.Context, jobID string, fields ledger.Fields) error
}

var (
	_ publisher = (*bus.Publisher)(nil)
	_ claimer   = (*ledger.Ledger)(nil)
)

type handler struct {
	launcher *launcher
	pub      publisher
	ledger   claimer
	// poll is how often a fleet waiting for capacity tries again (default 1 s).
	poll time.Duration
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
	launched, err := h.launchWithin(claim.Context(), fp)
	if errors.Is(err, errFleetEnded) || bus.IsPermanent(err) {
		if rerr := h.ledger.Release(ctx, fp.JobID); rerr != nil {
			bus.Logger(ctx).Error("releasing the fleet's capacity", "error", rerr.Error())
		}
	}
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

// launchWithin reserves the fleet's capacity against the stack's caps, then launches it.
// While the fleet does not fit the caps, or EC2 answers with an account limit
// (InstanceLimitExceeded, VcpuLimitExceeded: other instances must end first, so no other
// type is tried), it waits, noting so in the ledger (state "waiting for capacity"), and
// tries again every poll; once the fleet could no longer meet its deadline if it started
// now, the job is rejected (a permanent error: dead-lettered, and answered).
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
			if err := h.ledger.Note(ctx, fp.JobID, ledger.Fields{"waiting_for_capacity": why, "waiting_since": now}); err != nil {
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
			return nil
		}
	}
	if caps.Any() {
		t, err := ops.Template(fp.Template)
		if err != nil {
			return events.FleetLaunched{}, bus.Permanent(err)
		}
		r := ledger.Reservation{Instances: fp.Count, VCPUs: caps.FleetVCPUs(t, fp.Count), Template: fp.Template}
		lim := ledger.Limits{Instances: caps.MaxInstances, VCPUs: caps.MaxVCPUs, TemplateInstances: caps.Templates[fp.Template]}
		for {
			ok, err := h.ledger.Reserve(ctx, fp.JobID, r, lim)
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
