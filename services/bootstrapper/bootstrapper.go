// Package bootstrapper is the bootstrap stage: on FleetLaunched it runs the job's recipe on
// every instance over SSH (host key pinned) and publishes FleetBootstrapped.
package bootstrapper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/sshkey"
	"github.com/sortie-fleet/sortie/pkg/tags"
	"github.com/sortie-fleet/sortie/pkg/verify"
)

// PresignAPI is the S3 presigning call fetch steps need.
type PresignAPI interface {
	PresignGetObject(ctx context.Context, params *s3.GetObjectInput, optFns ...func(*s3.PresignOptions)) (*v4.PresignedHTTPRequest, error)
}

// Claimer is the ledger call the bootstrapper makes: the job's bootstrapped stage, claimed
// (and renewed while the bootstrap runs) so that a fleet is never bootstrapped twice at
// once, even when its FleetLaunched is delivered again meanwhile; and the state of a
// replacement revision that cannot be bootstrapped.
type Claimer interface {
	Claim(ctx context.Context, jobID string, stage ledger.Stage) (*ledger.Claim, error)
	SetRevisionState(ctx context.Context, jobID string, rev int, state string) error
}

var (
	_ PresignAPI = (*s3.PresignClient)(nil)
	_ Claimer    = (*ledger.Ledger)(nil)
)

// Run bootstraps the fleets of the FleetLaunched events it consumes until ctx is
// cancelled. It loads the SSH login key once, at start.
func Run(ctx context.Context, cfg Config, deps service.Deps) error {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("bootstrapper config: %w", err)
	}
	deps = deps.WithDefaults()
	if deps.Ops == nil || deps.Publisher == nil {
		return errors.New("bootstrapper: deps need Ops and Publisher")
	}
	s3c := s3.NewFromConfig(deps.AWS, awsx.S3Options(deps.AWS))
	signer, err := sshkey.Load(ctx, s3c, cfg.SSHKey)
	if err != nil {
		return fmt.Errorf("bootstrapper: %w", err)
	}
	ec2c := ec2.NewFromConfig(deps.AWS)
	st := &stage{
		deps:          deps,
		ledger:        deps.LedgerFor(cfg.Base),
		fetcher:       cfg.Fetcher,
		secretsBucket: cfg.Topology().SecretsBucketName(),
		ec2:           ec2c,
		hosts: hostResolver{
			ec2: ec2c, stack: cfg.Prefix, local: cfg.LocalMode,
			consoleWait: cfg.HostKeyTimeout, consolePoll: verify.DefaultConsolePoll,
		},
		presign: s3.NewPresignClient(s3c),
		runner: &runner{
			dial:             dialRemote,
			signer:           signer,
			dialTimeout:      cfg.DialTimeout,
			stepTimeout:      cfg.StepTimeout,
			concurrency:      cfg.Concurrency,
			handshakeTimeout: cfg.HandshakeTimeout,
			prefix:           cfg.Prefix,
			now:              deps.Now,
			metrics:          deps.Telemetry,
		},
	}
	router, err := bus.NewRouter(deps.Bus(bus.Config{
		Topology: cfg.Topology(), Service: bus.Bootstrapper, AWS: deps.AWS, Logger: deps.Logger,
		OnDeadLetter: deps.Rejecter(cfg.Base, bus.Bootstrapper).OnDeadLetter, MaxHandle: cfg.MaxHandle, WaitTime: cfg.PollWait,
	}))
	if err != nil {
		return fmt.Errorf("bootstrapper: %w", err)
	}
	router.Handle(bus.FleetLaunched, st.handle)
	return router.Run(ctx)
}

// stage holds what the handler needs.
type stage struct {
	deps    service.Deps
	ledger  Claimer
	fetcher string
	// secretsBucket is the stack's secrets bucket: never presigned, whatever a recipe says.
	secretsBucket string
	ec2           EC2API
	hosts         hostResolver
	presign       PresignAPI
	runner        *runner
}

// handle: FleetLaunched → bootstrap every instance → FleetBootstrapped. Each plan
// revision claims its own bootstrapped stage (ledger.StageAt): a replacement fleet of
// revision n > 1 is bootstrapped like the first, once; one that cannot be is recorded
// failed instead of dead-lettered (replacementFailed).
func (s *stage) handle(ctx context.Context, m *bus.Message) error {
	ev, err := events.DecodeFleetLaunched(m.Payload)
	if err != nil {
		return err // wraps events.ErrInvalid: dead-lettered at once
	}
	claim, err := s.ledger.Claim(ctx, ev.JobID, ledger.StageAt(ledger.Bootstrapped, ev.PlanRevision))
	if errors.Is(err, ledger.ErrTaken) {
		bus.Logger(ctx).Debug("duplicate FleetLaunched: nothing to do", "fleet_id", ev.FleetID, "plan_revision", ev.PlanRevision, "reason", err.Error())
		return nil
	}
	if err != nil {
		return fmt.Errorf("fleet %s: %w", ev.FleetID, err)
	}
	defer claim.Release(ctx)
	out, err := s.bootstrapFleet(claim.Context(), ev)
	if err != nil {
		if ev.PlanRevision > 1 && (bus.IsPermanent(err) || lastDelivery(m)) {
			return s.replacementFailed(ctx, ev, claim, err, m)
		}
		return err
	}
	if err := claim.Checkpoint(); err != nil {
		return err
	}
	if err := s.deps.Publisher.Publish(ctx, out); err != nil {
		err = fmt.Errorf("fleet %s: %w", ev.FleetID, err)
		if ev.PlanRevision > 1 && lastDelivery(m) {
			return s.replacementFailed(ctx, ev, claim, err, m)
		}
		return err
	}
	ok := 0
	for _, r := range out.Instances {
		if r.OK {
			ok++
		}
	}
	if err := claim.Done(ctx, bootstrapFields(ev.PlanRevision, ok, len(out.Instances)-ok)); err != nil {
		bus.Logger(ctx).Error("recording the bootstrap in the ledger", "error", err.Error())
	}
	return nil
}

// lastDelivery says whether m is its queue's last delivery: failing it dead-letters it.
func lastDelivery(m *bus.Message) bool { return m.ReceiveCount >= bus.MaxReceiveCount }

// replacementFailed answers a replacement revision (plan revision > 1) that cannot be
// bootstrapped — a permanent error, or a last delivery that failed — without ending the
// job, as a dead letter would: the first revision's instances still run and may finish
// it. The revision is recorded failed (the monitor stops waiting for it; its instances are
// reaped with the job's), the stage done, and the message acknowledged.
func (s *stage) replacementFailed(ctx context.Context, ev events.FleetLaunched, claim *ledger.Claim, cause error, m *bus.Message) error {
	why := cause.Error()
	if !bus.IsPermanent(cause) {
		why = fmt.Sprintf("gave up after %d deliveries: %s", m.ReceiveCount, why)
	}
	bus.Logger(ctx).Warn("replacement fleet not bootstrapped: the job goes on without it", "fleet_id", ev.FleetID, "plan_revision", ev.PlanRevision, "reason", why)
	if err := s.ledger.SetRevisionState(ctx, ev.JobID, ev.PlanRevision, ledger.RevFailed+": "+why); err != nil {
		return fmt.Errorf("fleet %s revision %d: %w", ev.FleetID, ev.PlanRevision, err)
	}
	if err := claim.Done(ctx, ledger.Fields{"rev" + strconv.Itoa(ev.PlanRevision) + "_bootstrap_failed": why}); err != nil {
		bus.Logger(ctx).Error("recording the failed bootstrap in the ledger", "error", err.Error())
	}
	return nil
}

// bootstrapFields are what the ledger records of a bootstrap: "bootstrapped_ok" and
// "bootstrapped_failed" for the first plan revision, "rev<n>_bootstrapped_ok" and
// "rev<n>_bootstrapped_failed" for a replacement, which must not overwrite the first's.
func bootstrapFields(rev, ok, failed int) ledger.Fields {
	p := ""
	if rev > 1 {
		p = "rev" + strconv.Itoa(rev) + "_"
	}
	return ledger.Fields{p + "bootstrapped_ok": ok, p + "bootstrapped_failed": failed}
}

// bootstrapFleet runs the recipe on every instance of ev and returns the event that
// reports it. Its errors are permanent (the event names an unknown recipe, template or
// bad parameters); instance failures are results, not errors.
func (s *stage) bootstrapFleet(ctx context.Context, ev events.FleetLaunched) (events.FleetBootstrapped, error) {
	log := bus.Logger(ctx).With("fleet_id", ev.FleetID)
	p, err := planFleet(ev, s.deps.Ops.Current())
	if err != nil {
		return events.FleetBootstrapped{}, err
	}
	render := s.renderer(p)
	// Render once up front, so bad parameters fail the message before any connection.
	if _, _, err := render(ctx); err != nil {
		if errors.As(err, new(*presignError)) {
			return events.FleetBootstrapped{}, fmt.Errorf("fleet %s: %w", ev.FleetID, err)
		}
		return events.FleetBootstrapped{}, bus.Permanent(fmt.Errorf("fleet %s: recipe %s: %w", ev.FleetID, ev.Recipe, err))
	}
	if p.target, err = s.hosts.targets(ctx, p); err != nil {
		return events.FleetBootstrapped{}, fmt.Errorf("fleet %s: %w", ev.FleetID, err) // EC2 unreadable: retried
	}
	log.Info("bootstrapping fleet", "instances", len(ev.Instances), "recipe", ev.Recipe, "user", p.user)
	results := s.runner.bootstrapAll(ctx, log, p, render)
	s.tagBootstrapped(ctx, log, results)

	out := events.FleetBootstrapped{
		Header:       events.NewHeader(ev.JobID, ev.CorrelationID, s.deps.Now()),
		FleetID:      ev.FleetID,
		PlanRevision: ev.PlanRevision,
		Template:     ev.Template,
		Recipe:       ev.Recipe,
		Params:       ev.Params, // the monitor renders the start steps' log paths with them
		DeadlineAt:   ev.DeadlineAt,
		HostKey:      ev.HostKey,
		KeyName:      ev.KeyName,
		Instances:    results,
	}
	ok := 0
	for _, r := range results {
		if r.OK {
			ok++
		}
	}
	log.Info("fleet bootstrapped", "instances", len(results), "ok", ok, "failed", len(results)-ok)
	return fit(out), nil
}

// presignError marks a presigning failure: transient (credentials), unlike the recipe's
// other rendering errors.
type presignError struct{ err error }

func (e *presignError) Error() string { return e.err.Error() }
func (e *presignError) Unwrap() error { return e.err }

// renderer renders the plan's recipe, presigning every fetch step's object for
// recipe.PresignExpiry at each call. Nothing in the stack's secrets bucket or outside the
// recipe's fetch_buckets is ever presigned: recipe.Render refuses it, and the presigner
// checks again (a permanent error).
func (s *stage) renderer(p fleetPlan) renderFunc {
	return func(ctx context.Context) ([]recipe.Step, []string, error) {
		var secrets []string
		presign := func(bucket, key string) (string, error) {
			if err := recipe.CheckFetch(p.recipe, s.secretsBucket, bucket, key); err != nil {
				return "", err
			}
			req, err := s.presign.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)},
				s3.WithPresignExpires(recipe.PresignExpiry))
			if err != nil {
				return "", &presignError{err}
			}
			secrets = append(secrets, req.URL)
			return req.URL, nil
		}
		steps, err := recipe.Render(p.recipe, p.ev.Params, recipe.RenderEnv{Presign: presign, Fetcher: s.fetcher, SecretsBucket: s.secretsBucket})
		if err != nil {
			return nil, nil, err
		}
		return steps, secrets, nil
	}
}

// tagBootstrapped tags the instances that were bootstrapped; best effort.
func (s *stage) tagBootstrapped(ctx context.Context, log *slog.Logger, results []events.InstanceResult) {
	var ids []string
	for _, r := range results {
		if r.OK {
			ids = append(ids, r.ID)
		}
	}
	if len(ids) == 0 {
		return
	}
	slices.Sort(ids)
	_, err := s.ec2.CreateTags(ctx, &ec2.CreateTagsInput{
		Resources: ids,
		Tags:      []ec2types.Tag{{Key: aws.String(tags.Stage), Value: aws.String(StageBootstrapped)}},
	})
	if err != nil {
		log.Warn("tagging instances bootstrapped", "instances", ids, "error", err.Error())
	}
}
