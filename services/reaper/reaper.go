// Package reaper is the last stage: on JobFinished it archives every instance's logs to S3
// (SSE-KMS, verified) and terminates the fleet (FleetTerminated); a sweep on a timer
// terminates Sortie's instances whose lease has expired.
package reaper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/sortie-fleet/sortie/pkg/archive"
	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cost"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/metrics"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/sshaddr"
	"github.com/sortie-fleet/sortie/pkg/sshkey"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// FallbackTTL is the TTL of an instance without a usable lease tag when the ops config has
// no template to take one from.
const FallbackTTL = time.Hour

// Run reaps the fleets of the JobFinished events it consumes and sweeps for expired
// instances on its timer until ctx is cancelled. It loads the SSH login key once, at start,
// and arms this replica's sweep timer.
func Run(ctx context.Context, cfg Config, deps service.Deps) error {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("reaper config: %w", err)
	}
	deps = deps.WithDefaults()
	if deps.Ops == nil || deps.Publisher == nil {
		return errors.New("reaper: deps need Ops and Publisher")
	}
	s3c := s3.NewFromConfig(deps.AWS, awsx.S3Options(deps.AWS))
	signer, err := sshkey.Load(ctx, s3c, cfg.SSHKey)
	if err != nil {
		return fmt.Errorf("reaper: %w", err)
	}
	ec2c := ec2.NewFromConfig(deps.AWS)
	batcher, err := metrics.NewBatcher(metrics.Config{API: metrics.NewClient(deps.AWS), FlushInterval: cfg.MetricsFlush, Logger: deps.Logger})
	if err != nil {
		return fmt.Errorf("reaper: %w", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := batcher.Close(ctx); err != nil {
			deps.Logger.Error("flushing metrics at shutdown", "error", err.Error())
		}
	}()
	st := &stage{
		cfg:     cfg,
		deps:    deps,
		ec2:     ec2c,
		metrics: batcher,
		arch: &archiver{
			dial:     dialRemote,
			signer:   signer,
			store:    archive.Store{API: s3c, Bucket: cfg.Topology().BucketName(), KMSKeyID: cfg.KMSKeyID},
			maxBytes: cfg.ArchiveMaxBytes,
			alive:    stillRunning(ec2c, cfg.Prefix),
		},
		term:   terminator{api: ec2c, stack: cfg.Prefix, minDelay: cfg.WaiterMinDelay, maxDelay: cfg.WaiterMaxDelay, timeout: cfg.TerminateTimeout},
		chain:  &sweepChain{},
		ledger: deps.LedgerFor(cfg.Base),
	}
	st.learner = deps.LedgerFor(cfg.Base)
	router, err := bus.NewRouter(deps.Bus(bus.Config{
		Topology: cfg.Topology(), Service: bus.Reaper, OnDeadLetter: deps.Rejecter(cfg.Base, bus.Reaper).OnDeadLetter, AWS: deps.AWS, Logger: deps.Logger, WaitTime: cfg.PollWait,
	}))
	if err != nil {
		return fmt.Errorf("reaper: %w", err)
	}
	router.Handle(bus.JobFinished, st.handleJobFinished)
	router.Handle(bus.InstanceLost, st.handleInstanceLost)
	router.HandleTimers(st.handleTimer)
	router.OnReady(st.armSweep) // once the timer queue exists
	return router.Run(ctx)
}

// Claimer is the ledger call the reaper makes: the job's terminated stage, claimed before
// reaping, so that FleetTerminated is published once per job; and the capacity of every
// plan revision of the fleet, released once it is terminated.
type Claimer interface {
	Claim(ctx context.Context, jobID string, stage ledger.Stage) (*ledger.Claim, error)
	ReleaseAll(ctx context.Context, jobID string, revs int) error
	Get(ctx context.Context, jobID string) (ledger.Record, error)
}

var _ Claimer = (*ledger.Ledger)(nil)

// stage holds what the handlers need.
type stage struct {
	cfg     Config
	deps    service.Deps
	ec2     EC2API
	metrics metricsSink
	arch    *archiver
	term    terminator
	chain   *sweepChain
	ledger  Claimer
	learner rateLearner // nil learns nothing
}

// metricsSink takes the reaper's CloudWatch data points.
type metricsSink interface {
	Add(d metrics.Datum)
}

var _ metricsSink = (*metrics.Batcher)(nil)

// handleJobFinished: JobFinished → claim the job's terminated stage → archive every
// instance's logs → terminate → FleetTerminated. A duplicate JobFinished whose job is
// terminated (or being reaped by another replica) does nothing.
//
// A job an operator holds (`sortie hold`, `submit --hold-on-failure`) is not reaped while
// the hold is in force: its instances keep running (the monitor extended their leases to
// the hold's end), and a held timer checks the hold again at its end, or every sweep
// interval, so a release is acted on within one; FleetTerminated is published when the
// fleet is finally reaped.
func (s *stage) handleJobFinished(ctx context.Context, m *bus.Message) error {
	ev, err := events.DecodeJobFinished(m.Payload)
	if err != nil {
		return err // wraps events.ErrInvalid: dead-lettered at once (the sweep still reaps the fleet)
	}
	return s.finishJob(ctx, ev, m.Payload)
}

// finishJob reaps a finished job's fleet unless a hold keeps it.
func (s *stage) finishJob(ctx context.Context, ev events.JobFinished, body []byte) error {
	rec, err := s.ledger.Get(ctx, ev.JobID)
	if err != nil {
		return fmt.Errorf("fleet %s: %w", ev.FleetID, err)
	}
	if rec.DoneAt(ledger.Terminated) != "" {
		bus.Logger(ctx).Debug("duplicate JobFinished: nothing to do", "fleet_id", ev.FleetID)
		return nil
	}
	now := s.deps.Now()
	if h := rec.Hold(); h.Active(now, ev.Outcome) && now.Before(s.cfg.HoldEnd(h)) {
		end := s.cfg.HoldEnd(h)
		wait := min(end.Sub(now)+time.Second, s.cfg.SweepInterval)
		if err := s.deps.Publisher.After(ctx, bus.Reaper, wait, body, map[string]string{AttrTimer: TimerHeld}); err != nil {
			return fmt.Errorf("fleet %s: arming the held check: %w", ev.FleetID, err)
		}
		bus.Logger(ctx).Info("job held: its fleet is kept", "fleet_id", ev.FleetID, "hold_by", h.By,
			"hold_reason", h.Reason, "hold_until", end.UTC(), "next_check", wait.String())
		return nil
	}
	claim, err := s.ledger.Claim(ctx, ev.JobID, ledger.Terminated)
	if errors.Is(err, ledger.ErrTaken) {
		bus.Logger(ctx).Debug("duplicate JobFinished: nothing to do", "fleet_id", ev.FleetID, "reason", err.Error())
		return nil
	}
	if err != nil {
		return fmt.Errorf("fleet %s: %w", ev.FleetID, err)
	}
	defer claim.Release(ctx)
	out, insts, err := s.reap(claim.Context(), ev)
	if err != nil {
		return err
	}
	// The fleet is terminated: the capacity of every plan revision (the first and the
	// replacements of lost instances) goes back to the stack (once, however often this
	// runs) before the job's end is told. The record is read again: a replacement may have
	// been planned while the fleet was reaped.
	if rec, err = s.ledger.Get(ctx, ev.JobID); err != nil {
		return fmt.Errorf("fleet %s: %w", ev.FleetID, err)
	}
	if err := s.ledger.ReleaseAll(ctx, ev.JobID, rec.PlanRevision()); err != nil {
		return fmt.Errorf("fleet %s: %w", ev.FleetID, err)
	}
	if err := claim.Checkpoint(); err != nil {
		return err
	}
	if err := s.deps.Publisher.Publish(ctx, out); err != nil {
		return fmt.Errorf("fleet %s: %w", ev.FleetID, err)
	}
	if err := claim.Done(ctx, ledger.Fields{"outcome": out.Outcome, "reason": out.Reason,
		"instance_seconds": out.InstanceSeconds, "archives": len(out.Archives)}); err != nil {
		bus.Logger(ctx).Error("recording FleetTerminated in the ledger", "error", err.Error())
	}
	s.learnRate(ctx, ev, rec, insts)
	return nil
}

// reap archives the logs of the fleet's instances and terminates them, returning the
// FleetTerminated and the instances as EC2 last described them: those this stack
// owns and the event's fleet owns (sortie:stack and sortie:fleet both match), whether the
// event lists them or not. An instance the event lists that does not match is refused:
// never archived, never terminated, and listed in FleetTerminated.Refused with the reason.
// An instance whose logs cannot be archived is terminated all the same (nothing is leaked
// for a log) and listed in ArchiveFailures; one that is gone (a spot instance EC2
// reclaimed) is listed with the archive made while it ran, if any (see
// handleInstanceLost). A listed instance is pinned with its own host key when the event
// gives one (an instance of a later plan revision), else the fleet's; an unlisted one with
// the key its console shows. Its errors (EC2 calls that failed) are transient; running it
// again is safe.
func (s *stage) reap(ctx context.Context, ev events.JobFinished) (events.FleetTerminated, []ec2types.Instance, error) {
	log := bus.Logger(ctx).With("fleet_id", ev.FleetID)
	var fleetKey ssh.PublicKey
	if ev.HostKey != "" {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(ev.HostKey))
		if err != nil {
			log.Error("fleet host key does not parse: the event's instances' keys are read from their console", "error", err.Error())
		}
		fleetKey = k
	}
	// The key to pin for each listed instance: its own (an instance of a later plan
	// revision), else the fleet's. An unlisted one's is read from its console.
	listed := map[string]ssh.PublicKey{}
	var ids []string
	for _, in := range ev.Instances {
		listed[in.ID] = fleetKey
		if in.HostKey != "" {
			k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(in.HostKey))
			if err != nil {
				log.Error("instance host key does not parse: its key is read from its console", "instance", in.ID, "error", err.Error())
			}
			listed[in.ID] = k
		}
		ids = append(ids, in.ID)
	}
	stack := s.cfg.Prefix
	owned, err := describeFleet(ctx, s.ec2, stack, ev.FleetID, ids)
	if err != nil {
		return events.FleetTerminated{}, nil, fmt.Errorf("fleet %s: %w", ev.FleetID, err)
	}
	refused, err := s.refusals(ctx, stack, ev.FleetID, ids, owned)
	if err != nil {
		return events.FleetTerminated{}, nil, fmt.Errorf("fleet %s: %w", ev.FleetID, err)
	}
	for _, r := range refused {
		log.Warn("instance refused: not this fleet's in this stack; not archived, not terminated",
			"instance", r.InstanceID, "reason", r.Reason, "detail", r.Detail)
	}
	log.Info("reaping fleet", "instances", len(owned), "refused", len(refused), "outcome", ev.Outcome)

	results := make([]archiveResult, len(owned))
	var g errgroup.Group
	g.SetLimit(s.cfg.Concurrency)
	for i, in := range owned {
		g.Go(func() error {
			id := aws.ToString(in.InstanceId)
			results[i] = s.archiveInstance(ctx, log.With("instance", id), ev, in, listed[id])
			return nil
		})
	}
	_ = g.Wait()

	var live []string
	final := map[string]ec2types.Instance{}
	for _, in := range owned {
		id := aws.ToString(in.InstanceId)
		final[id] = in
		if stateOf(in) != ec2types.InstanceStateNameTerminated {
			live = append(live, id)
		}
	}
	done, err := s.term.terminate(ctx, live, true)
	if err != nil {
		return events.FleetTerminated{}, nil, fmt.Errorf("fleet %s: %w", ev.FleetID, err)
	}
	for _, in := range done {
		final[aws.ToString(in.InstanceId)] = in
	}
	s.deps.Telemetry.InstancesTerminated(len(live))
	now := s.deps.Now()
	out := events.FleetTerminated{
		Header:  events.NewHeader(ev.JobID, ev.CorrelationID, now),
		FleetID: ev.FleetID,
		Outcome: ev.Outcome,
		Reason:  ev.Reason,
		Refused: refused,
	}
	var insts []ec2types.Instance
	for _, id := range slices.Sorted(maps.Keys(final)) {
		insts = append(insts, final[id])
		out.TerminatedInstanceIDs = append(out.TerminatedInstanceIDs, id)
	}
	out.InstanceSeconds = InstanceSeconds(insts, now)
	if c, priced := cost.Instances(insts, now); priced && len(insts) > 0 {
		out.Cost = min(c, events.MaxCost)
		s.metrics.Add(metrics.FleetCost(ev.JobID, out.Cost))
	} else {
		log.Warn("fleet cost unknown: an instance carries no hourly price tag")
	}
	out.PlannedCost = min(cost.PlannedCost(insts), events.MaxCost)
	for i, r := range results {
		switch {
		case r.archive != nil:
			out.Archives = append(out.Archives, *r.archive)
		case r.err != nil:
			out.ArchiveFailures = append(out.ArchiveFailures, events.ArchiveFailure{
				InstanceID: aws.ToString(owned[i].InstanceId), Error: clipText(r.err.Error()),
			})
		}
	}
	slices.SortFunc(out.Archives, func(a, b events.Archive) int { return strings.Compare(a.InstanceID, b.InstanceID) })
	slices.SortFunc(out.ArchiveFailures, func(a, b events.ArchiveFailure) int { return strings.Compare(a.InstanceID, b.InstanceID) })
	log.Info("fleet terminated", "terminated", len(out.TerminatedInstanceIDs), "archives", len(out.Archives),
		"archive_failures", len(out.ArchiveFailures), "refused", len(out.Refused),
		"instance_seconds", out.InstanceSeconds, "cost", out.Cost, "planned_cost", out.PlannedCost, "newly_terminated", len(live))
	return out, insts, nil
}

// refusals says why each id of the event that is not among owned is refused. The ids are
// described by id only to name the reason: nothing read here is archived, tagged or
// terminated.
func (s *stage) refusals(ctx context.Context, stack, fleetID string, ids []string, owned []ec2types.Instance) ([]events.RefusedInstance, error) {
	var others []string
	for _, id := range ids {
		if !slices.ContainsFunc(owned, func(in ec2types.Instance) bool { return aws.ToString(in.InstanceId) == id }) {
			others = append(others, id)
		}
	}
	if len(others) == 0 {
		return nil, nil
	}
	found := map[string]ec2types.Instance{}
	for chunk := range slices.Chunk(others, maxFilterValues) {
		more, err := describe(ctx, s.ec2, []ec2types.Filter{{Name: aws.String("instance-id"), Values: chunk}})
		if err != nil {
			return nil, err
		}
		for _, in := range more {
			found[aws.ToString(in.InstanceId)] = in
		}
	}
	var out []events.RefusedInstance
	for _, id := range others {
		in, ok := found[id]
		r := Refusal(in, ok, stack, fleetID)
		r.InstanceID = id
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b events.RefusedInstance) int { return strings.Compare(a.InstanceID, b.InstanceID) })
	return out, nil
}

// Refusal says why an instance (known to EC2 when known is set) is not the fleet's in the
// stack: another stack's, untagged, another fleet's, or unknown. An instance that is the
// fleet's in the stack gets an empty Reason.
func Refusal(in ec2types.Instance, known bool, stack, fleetID string) events.RefusedInstance {
	if !known {
		return events.RefusedInstance{Reason: events.RefusedUnknown, Detail: "EC2 does not know it"}
	}
	tg := tags.Map(in.Tags)
	gotStack, hasStack := tg[tags.Stack]
	gotFleet, hasFleet := tg[tags.Fleet]
	switch {
	case hasStack && gotStack != stack:
		return events.RefusedInstance{Reason: events.RefusedOtherStack, Detail: clipText(fmt.Sprintf("%s is %q, this stack is %q", tags.Stack, gotStack, stack))}
	case !hasStack:
		return events.RefusedInstance{Reason: events.RefusedUntagged, Detail: "no " + tags.Stack + " tag"}
	case !hasFleet:
		return events.RefusedInstance{Reason: events.RefusedUntagged, Detail: "no " + tags.Fleet + " tag"}
	case gotFleet != fleetID:
		return events.RefusedInstance{Reason: events.RefusedOtherFleet, Detail: clipText(fmt.Sprintf("%s is %q, the event's fleet is %q", tags.Fleet, gotFleet, fleetID))}
	}
	return events.RefusedInstance{}
}

// clipText keeps a text within an event's limit for free text.
func clipText(s string) string {
	if len(s) > events.MaxTextBytes {
		return strings.ToValidUTF8(s[:events.MaxTextBytes-3], "") + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// archiveResult is one instance's archive, or why there is none.
type archiveResult struct {
	archive *events.Archive
	err     error
}

// archiveInstance archives one instance's logs (.sortie and ev.Logs) if it is still
// running, else finds the archive an earlier delivery made. A failure is logged and
// counted in the reaper's ArchiveFailures metric.
func (s *stage) archiveInstance(ctx context.Context, log *slog.Logger, ev events.JobFinished, in ec2types.Instance, key ssh.PublicKey) archiveResult {
	id := aws.ToString(in.InstanceId)
	objKey := ArchiveKey(ev.JobID, id)
	state := stateOf(in)
	var archErr error
	if state == ec2types.InstanceStateNameRunning || state == ec2types.InstanceStateNamePending {
		t, err := s.target(ctx, log, in, ev.JobID, ev.Template, key)
		if err == nil {
			t.Logs = ev.Logs
			var arch events.Archive
			if arch, err = s.arch.archive(ctx, t, s.cfg.ArchiveTimeout); err == nil {
				log.Info("logs archived", "bucket", arch.Bucket, "key", arch.Key, "size_bytes", arch.SizeBytes)
				s.deps.Telemetry.ArchiveStored(arch.SizeBytes)
				return archiveResult{archive: &arch}
			}
		}
		archErr = err
	} else {
		archErr = fmt.Errorf("instance is %s", orUnknown(string(state)))
	}
	// A previous delivery of this JobFinished may have archived the logs already.
	if arch, err := s.arch.store.Verify(ctx, objKey, -1); err == nil {
		arch.InstanceID = id
		log.Info("logs archived earlier", "bucket", arch.Bucket, "key", arch.Key, "size_bytes", arch.SizeBytes, "archive_error", archErr.Error())
		return archiveResult{archive: &arch}
	}
	log.Error("logs not archived; terminating the instance anyway", "error", archErr.Error())
	s.metrics.Add(metrics.ArchiveFailed(s.cfg.Prefix))
	return archiveResult{err: archErr}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown to EC2"
	}
	return s
}

// target says how to reach an instance: its address as EC2 describes it (pkg/sshaddr:
// never from an event; the template's private or public IP; the local cloud's endpoint tag
// only in local mode); the fleet's
// pinned host key, else the one its console output shows.
func (s *stage) target(ctx context.Context, log *slog.Logger, in ec2types.Instance, jobID, template string, key ssh.PublicKey) (target, error) {
	tg := tags.Map(in.Tags)
	id := aws.ToString(in.InstanceId)
	if jobID == "" {
		jobID = tg[tags.JobID]
	}
	if template == "" {
		template = tg[tags.Template]
	}
	mode := sshaddr.Mode{Local: s.cfg.LocalMode}
	if tmpl, err := s.deps.Ops.Current().Template(template); err == nil {
		mode.PublicIP = tmpl.PublicAddress()
	}
	addr, err := mode.Of(in)
	if err != nil {
		return target{}, err
	}
	t := target{InstanceID: id, JobID: jobID, Addr: addr, User: s.userFor(template), HostKey: key}
	if t.HostKey == nil {
		k, err := consoleHostKey(ctx, s.ec2, id)
		if err != nil {
			log.Warn("host key unknown", "error", err.Error())
		}
		t.HostKey = k
	}
	return t, nil
}

// userFor is the login user of a template, opsconfig.DefaultUser for an unknown one (the
// reaper reaps whatever it is told: an unknown name must not keep instances alive).
func (s *stage) userFor(template string) string {
	if t, err := s.deps.Ops.Current().Template(template); err == nil && t.User != "" {
		return t.User
	}
	return opsconfig.DefaultUser
}

// ttlFor is the TTL of an instance without a usable lease: its template's, else the
// longest of any template (the sweep errs on the side of keeping an instance).
func (s *stage) ttlFor(tg map[string]string) time.Duration {
	ops := s.deps.Ops.Current()
	if t, err := ops.Template(tg[tags.Template]); err == nil && t.TTL > 0 {
		return t.TTL.Std()
	}
	var longest time.Duration
	for _, t := range ops.Templates {
		longest = max(longest, t.TTL.Std())
	}
	if longest == 0 {
		return FallbackTTL
	}
	return longest
}

// armSweep sends this replica's next sweep timer.
func (s *stage) armSweep(ctx context.Context) error {
	due := s.deps.Now().Add(s.cfg.SweepInterval).UTC()
	attrs := map[string]string{AttrTimer: TimerSweep, AttrSweepDue: due.Format(time.RFC3339Nano)}
	if err := s.deps.Publisher.After(ctx, bus.Reaper, s.cfg.SweepInterval, []byte("{}"), attrs); err != nil {
		return fmt.Errorf("arming sweep: %w", err)
	}
	s.chain.armed(due)
	return nil
}

// handleTimer runs a sweep, having armed the next one (only from the latest timer, so
// chains do not multiply). A sweep's failures are logged, never returned: a retry would
// arm another timer.
func (s *stage) handleTimer(ctx context.Context, m *bus.Message) error {
	if m.Attributes[AttrTimer] == TimerHeld {
		ev, err := events.DecodeJobFinished(m.Payload)
		if err != nil {
			return err
		}
		return s.finishJob(ctx, ev, m.Payload)
	}
	if kind := m.Attributes[AttrTimer]; kind != TimerSweep {
		return bus.Permanent(fmt.Errorf("unknown timer %q (want %s=%s)", kind, AttrTimer, TimerSweep))
	}
	log := bus.Logger(ctx)
	due, _ := time.Parse(time.RFC3339Nano, m.Attributes[AttrSweepDue])
	if s.chain.shouldRearm(due) {
		if err := s.armSweep(ctx); err != nil {
			return err
		}
	} else {
		log.Debug("a later sweep is armed: this timer's chain ends", "due", due)
	}
	s.sweep(ctx, log)
	return nil
}

// sweep terminates every instance of the stack whose lease has expired, and none whose
// lease is live: leases are checked again just before terminating. Within
// SweepArchiveWindow of the expiry it first tries to archive the logs (for at most
// SweepArchiveTimeout); later it terminates without trying, so an archive that keeps
// failing (or a reaper that keeps dying while archiving) never keeps an instance alive.
func (s *stage) sweep(ctx context.Context, log *slog.Logger) {
	stack := s.cfg.Prefix
	insts, err := describe(ctx, s.ec2, sweepFilters(stack))
	if err != nil {
		log.Error("sweep", "error", err.Error())
		return
	}
	now := s.deps.Now()
	expired := SelectExpired(insts, now, s.ttlFor)
	log.Debug("sweep", "instances", len(insts), "expired", len(expired))
	if len(expired) == 0 {
		return
	}
	var g errgroup.Group
	g.SetLimit(s.cfg.Concurrency)
	for _, x := range expired {
		g.Go(func() error {
			l := log.With("instance", aws.ToString(x.Instance.InstanceId), "job_id", tags.Map(x.Instance.Tags)[tags.JobID])
			l.Warn("sweeping instance", "reason", x.Reason)
			if !ArchiveBeforeSweep(x.ExpiredAt, now, s.cfg.SweepArchiveWindow) {
				l.Warn("sweep: logs not archived: expired longer ago than the archive window", "window", s.cfg.SweepArchiveWindow.String())
				s.metrics.Add(metrics.ArchiveFailed(stack))
				return nil
			}
			t, err := s.target(ctx, l, x.Instance, "", "", nil)
			if err == nil {
				var arch events.Archive
				if arch, err = s.arch.archive(ctx, t, s.cfg.SweepArchiveTimeout); err == nil {
					l.Info("sweep: logs archived", "bucket", arch.Bucket, "key", arch.Key, "size_bytes", arch.SizeBytes)
					s.deps.Telemetry.ArchiveStored(arch.SizeBytes)
					return nil
				}
			}
			l.Warn("sweep: logs not archived", "error", err.Error())
			s.metrics.Add(metrics.ArchiveFailed(stack))
			return nil
		})
	}
	_ = g.Wait()

	var ids []string
	for _, x := range expired {
		ids = append(ids, aws.ToString(x.Instance.InstanceId))
	}
	var fresh []ec2types.Instance
	for chunk := range slices.Chunk(ids, maxFilterValues) {
		more, err := describe(ctx, s.ec2, append(sweepFilters(stack), ec2types.Filter{Name: aws.String("instance-id"), Values: chunk}))
		if err != nil {
			log.Error("sweep: checking leases again", "error", err.Error())
			return
		}
		fresh = append(fresh, more...)
	}
	var doomed []string
	for _, x := range SelectExpired(fresh, s.deps.Now(), s.ttlFor) {
		if tags.Map(x.Instance.Tags)[tags.Stack] != stack {
			continue // the filter said so; checked again, as a wrong answer must not reap
		}
		doomed = append(doomed, aws.ToString(x.Instance.InstanceId))
	}
	if _, err := s.term.terminate(ctx, doomed, false); err != nil {
		log.Error("sweep", "error", err.Error())
		return
	}
	s.deps.Telemetry.InstancesTerminated(len(doomed))
	if len(doomed) > 0 {
		log.Warn("sweep terminated instances with expired leases", "instances", doomed)
	}
}

// ArchiveBeforeSweep says whether the sweep still tries to archive an instance whose lease
// expired at expiredAt: only within window of it.
func ArchiveBeforeSweep(expiredAt, now time.Time, window time.Duration) bool {
	return !now.After(expiredAt.Add(window))
}
