// Package monitor is the monitor stage: it watches a bootstrapped fleet's workloads over SSH on a timer, turns TaskReported into CloudWatch metrics, refreshes leases and decides JobFinished.
package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/metrics"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/sshaddr"
	"github.com/sortie-fleet/sortie/pkg/sshkey"
	"github.com/sortie-fleet/sortie/pkg/tags"
	"github.com/sortie-fleet/sortie/pkg/verify"
)

// Timer attributes. A check timer's body is the fleet's FleetBootstrapped; a settle
// timer's body is the JobFinished waiting for its task totals.
const (
	AttrTimer   = "sortie_timer"  // the timer's kind: TimerCheck or TimerSettle
	AttrMisses  = "sortie_misses" // consecutive SSH misses per instance: "i-0abc=2,i-0def=1"
	TimerCheck  = "check"
	TimerSettle = "settle"
)

// Instance tags the monitor reads and writes.
const (
	StageFinished = "finished" // set once JobFinished is published
)

// Run consumes FleetBootstrapped, TaskReported and the monitor's timers until ctx is
// cancelled, then flushes the metrics it holds.
func Run(ctx context.Context, cfg Config, deps service.Deps) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.WithDefaults()
	deps = deps.WithDefaults()
	if deps.Ops == nil || deps.Publisher == nil {
		return errors.New("monitor: deps need an ops config and a publisher")
	}
	signer, err := sshkey.Load(ctx, s3.NewFromConfig(deps.AWS, awsx.S3Options(deps.AWS)), cfg.SSHKey)
	if err != nil {
		return fmt.Errorf("monitor: %w", err)
	}
	cw := metrics.NewClient(deps.AWS)
	batcher, err := metrics.NewBatcher(metrics.Config{API: cw, FlushInterval: cfg.MetricsFlush, Logger: deps.Logger})
	if err != nil {
		return fmt.Errorf("monitor: %w", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := batcher.Close(ctx); err != nil {
			deps.Logger.Error("flushing metrics at shutdown", "error", err.Error())
		}
	}()
	router, err := bus.NewRouter(deps.Bus(bus.Config{
		Topology:     cfg.Topology(),
		Service:      bus.Monitor,
		OnDeadLetter: deps.Rejecter(cfg.Base, bus.Monitor).OnDeadLetter,
		AWS:          deps.AWS,
		Logger:       deps.Logger,
		WaitTime:     cfg.PollWait,
	}))
	if err != nil {
		return fmt.Errorf("monitor: %w", err)
	}
	m := &monitor{
		cfg:     cfg,
		ops:     deps.Ops,
		pub:     deps.Publisher,
		ec2:     ec2.NewFromConfig(deps.AWS),
		stats:   cw,
		metrics: batcher,
		prober:  sshProber{signer: signer, timeout: cfg.SSHTimeout},
		now:     deps.Now,
		ledger:  deps.LedgerFor(cfg.Base),
		fleets:  newFleetCache(maxCachedFleets),
	}
	router.Handle(bus.FleetBootstrapped, m.handleBootstrapped)
	router.Handle(bus.TaskReported, m.handleTaskReported)
	router.HandleTimers(m.handleTimer)
	router.HandleQueue(cfg.Topology().EC2EventsQueueName(), m.handleEC2Notice)
	return router.Run(ctx)
}

// The calls the monitor makes, with the SDK's signatures.
type (
	publisher interface {
		Publish(ctx context.Context, e events.Event) error
		PublishBody(ctx context.Context, e bus.Event, body []byte) error
		After(ctx context.Context, service string, delay time.Duration, body []byte, attrs map[string]string) error
	}
	ec2API interface {
		DescribeInstances(ctx context.Context, params *ec2.DescribeInstancesInput, optFns ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
		CreateTags(ctx context.Context, params *ec2.CreateTagsInput, optFns ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error)
		GetConsoleOutput(ctx context.Context, params *ec2.GetConsoleOutputInput, optFns ...func(*ec2.Options)) (*ec2.GetConsoleOutputOutput, error)
	}
	metricsSink interface {
		Add(d metrics.Datum)
		Flush(ctx context.Context) error
	}
	// claimer is the ledger calls the monitor makes: a job's watching stage (one check
	// chain per fleet), its finished stage (one JobFinished per job), and its task
	// reports, each counted once.
	claimer interface {
		Claim(ctx context.Context, jobID string, stage ledger.Stage) (*ledger.Claim, error)
		CountTask(ctx context.Context, jobID, taskID, outcome string) (ledger.TaskCount, error)
		MarkTaskSent(ctx context.Context, jobID, taskID, outcome string) error
		Get(ctx context.Context, jobID string) (ledger.Record, error)
		MarkLost(ctx context.Context, jobID, instanceID, cause string) error
		MarkLostSent(ctx context.Context, jobID, instanceID string) error
		RecordBootstrapped(ctx context.Context, jobID string, rev int, instances []ledger.RevisionInstance) error
	}
)

var (
	_ publisher   = (*bus.Publisher)(nil)
	_ ec2API      = (*ec2.Client)(nil)
	_ metricsSink = (*metrics.Batcher)(nil)
	_ claimer     = (*ledger.Ledger)(nil)
)

type monitor struct {
	cfg     Config
	ops     opsconfig.Source // read once per message
	pub     publisher
	ec2     ec2API
	stats   metrics.StatisticsAPI
	metrics metricsSink
	prober  prober
	now     func() time.Time
	ledger  claimer
	// fleets holds the FleetBootstrapped of the fleets this replica watches, so that a
	// workload's exit report can trigger a check at once.
	fleets *fleetCache
	// consoleKeys caches the host keys instances of templates with host_keys: instance
	// printed to their console (instance id → ssh.PublicKey).
	consoleKeys sync.Map
}

// handleTaskReported turns a workload's exit report into an immediate check of its fleet,
// and counts a task's report once in the ledger (by job, task id and outcome: a
// redelivered or duplicated report counts nothing), then sends its metrics and flushes
// them before the message is acknowledged, so that CloudWatch's totals are exact under
// redelivery. A report counted before whose metrics did not reach CloudWatch (the flush
// failed, the replica died) sends them on its redelivery. Only a crash between the flush
// and MarkTaskSent can count a task twice in CloudWatch (never in the ledger).
func (m *monitor) handleTaskReported(ctx context.Context, msg *bus.Message) error {
	e, err := events.DecodeTaskReported(msg.Payload)
	if err != nil {
		return err // wraps events.ErrInvalid: dead-lettered with the reason
	}
	if e.Exited() {
		return m.onExit(ctx, e, msg.ReceiveCount)
	}
	n, err := m.ledger.CountTask(ctx, e.JobID, e.TaskID, e.Outcome)
	if err != nil {
		return fmt.Errorf("counting task %s: %w", e.TaskID, err)
	}
	if n == ledger.TaskDuplicate {
		bus.Logger(ctx).Debug("duplicate TaskReported: counted before", "task_id", e.TaskID)
		return nil
	}
	for _, d := range metrics.TaskData(e) {
		m.metrics.Add(d)
	}
	if err := m.metrics.Flush(ctx); err != nil {
		return fmt.Errorf("sending the metrics of task %s: %w", e.TaskID, err)
	}
	if err := m.ledger.MarkTaskSent(ctx, e.JobID, e.TaskID, e.Outcome); err != nil {
		bus.Logger(ctx).Warn("marking the task's metrics sent", "task_id", e.TaskID, "error", err.Error())
	}
	return nil
}

// onExit checks the fleet of an exited workload at once, and finishes the job when every
// workload has ended (or one failed) instead of waiting for the next check. The verdict
// is the check's own (decide): the report only says when to look. The task reports of
// the instance went out before its exit report, on the same queue, so they are counted
// before the totals are read. A fleet this replica has not seen (another replica armed
// its checks) is left to its next check, which stays the backstop.
func (m *monitor) onExit(ctx context.Context, r events.TaskReported, receiveCount int) error {
	log := bus.Logger(ctx).With("fleet_id", r.FleetID, "instance_id", r.InstanceID, "step", r.TaskID, "exit_code", *r.ExitCode)
	body, ok := m.fleets.get(r.FleetID)
	if !ok {
		log.Info("workload exited on a fleet this replica does not watch: left to the next check")
		return nil
	}
	e, err := events.DecodeFleetBootstrapped(body)
	if err != nil || e.JobID != r.JobID {
		log.Warn("workload exit report does not match the fleet's job: ignored")
		return nil
	}
	rec, err := m.ledger.Get(ctx, e.JobID)
	if _, cancelled := rec.Cancelled(); err != nil || cancelled {
		return nil // cancelled (or unreadable): the check ends it with the right outcome
	}
	if pending, _ := rec.ReplacementPending(); pending {
		return nil // the check finishes it once the replacement is watched
	}
	vw, err := viewOf(e, rec)
	if err != nil {
		return nil // the check fails the job with the reason
	}
	e = vw.Event
	if !slices.ContainsFunc(e.Instances, func(in events.InstanceResult) bool { return in.ID == r.InstanceID }) {
		log.Warn("workload exit report from an instance outside the fleet: ignored")
		return nil
	}
	ids := instanceIDs(e)
	states, refused, err := m.describe(ctx, e.FleetID, ids)
	if err != nil {
		log.Warn("describing the fleet after an exit report; the next check decides", "error", err.Error())
		return nil
	}
	if finished(states) {
		m.fleets.drop(e.FleetID)
		return nil
	}
	if len(refused) > 0 || goneInstance(states, ids) != "" {
		return nil // the check reports which and why
	}
	wl, err := m.workloadsOf(e)
	if err != nil {
		return nil // the check fails the job with the reason
	}
	now := m.now()
	pastDeadline := now.After(e.DeadlineAt.Add(m.cfg.Grace))
	checks := probeAll(ctx, m.prober, m.targets(ctx, e, states), wl, pastDeadline, m.cfg.Parallel)
	// An instance unreachable now is not a miss here: only the periodic check counts those.
	v, _ := decide(checks, checkState{Misses: map[string]int{}, MaxMisses: math.MaxInt, Deadline: e.DeadlineAt, Grace: m.cfg.Grace, PastDeadline: pastDeadline})
	v = withReplacements(v, len(checks), false, "", pastDeadline, rec)
	if !v.Done {
		log.Debug("workload exited; others still run", "alive", v.Alive)
		return nil
	}
	log.Info("workload exited: finishing the job now", "outcome", v.Outcome)
	if err := m.finish(ctx, jobFinished(e, v, wl, now), receiveCount); err != nil {
		return err
	}
	m.fleets.drop(e.FleetID)
	return nil
}

// handleBootstrapped claims the job's watching stage (a duplicate FleetBootstrapped starts
// no second check chain), then fails the job at once when the recipe failed on any
// instance, and otherwise arms the fleet's first check.
func (m *monitor) handleBootstrapped(ctx context.Context, msg *bus.Message) error {
	e, err := events.DecodeFleetBootstrapped(msg.Payload)
	if err != nil {
		return err
	}
	log := bus.Logger(ctx).With("fleet_id", e.FleetID)
	if e.Revision() > 1 {
		return m.recordReplacement(ctx, e)
	}
	claim, err := m.ledger.Claim(ctx, e.JobID, ledger.Watching)
	if errors.Is(err, ledger.ErrTaken) {
		log.Debug("duplicate FleetBootstrapped: nothing to do", "reason", err.Error())
		return nil
	}
	if err != nil {
		return fmt.Errorf("watching fleet %s: %w", e.FleetID, err)
	}
	defer claim.Release(ctx)
	wl, wlErr := m.workloadsOf(e)
	// An instance lost meanwhile (a spot warning during the bootstrap) is replaced, not a
	// failed bootstrap; the check leaves it out.
	judged := e
	if rec, err := m.ledger.Get(ctx, e.JobID); err != nil {
		return fmt.Errorf("watching fleet %s: %w", e.FleetID, err)
	} else if lost := rec.Lost(); len(lost) > 0 {
		judged.Instances = slices.DeleteFunc(slices.Clone(e.Instances), func(in events.InstanceResult) bool { _, ok := lost[in.ID]; return ok })
	}
	switch v, failed := bootstrapVerdict(judged); {
	case failed:
		log.Warn("bootstrap failed: finishing the job", "reason", v.Reason)
		err = m.finish(ctx, jobFinished(e, v, wl, m.now()), msg.ReceiveCount)
	case wlErr != nil:
		// The instances exist: finish the job so that the reaper archives and terminates
		// them, rather than dead-lettering the event and leaving them to their lease.
		v := verdict{Done: true, Outcome: events.OutcomeFailed, Reason: "monitor cannot watch the fleet: " + wlErr.Error()}
		log.Error("cannot watch fleet: finishing the job", "error", wlErr.Error())
		err = m.finish(ctx, jobFinished(e, v, nil, m.now()), msg.ReceiveCount)
	default:
		if err = claim.Checkpoint(); err != nil {
			return err
		}
		m.fleets.put(e.FleetID, msg.Payload)
		if err = m.pub.After(ctx, bus.Monitor, m.cfg.Interval, msg.Payload, map[string]string{AttrTimer: TimerCheck}); err != nil {
			return fmt.Errorf("arming the check of fleet %s: %w", e.FleetID, err)
		}
		log.Info("watching fleet", "instances", len(e.Instances), "deadline", e.DeadlineAt, "interval", m.cfg.Interval)
	}
	if err != nil {
		return err
	}
	if err := claim.Done(ctx, watchFields(e, logPaths(wl))); err != nil {
		log.Error("recording the watch in the ledger", "error", err.Error())
	}
	return nil
}

// workloadsOf returns the start steps of the fleet's recipe with their paths on the
// instances, rendered with the job's parameters.
func (m *monitor) workloadsOf(e events.FleetBootstrapped) ([]recipe.Workload, error) {
	r, err := m.ops.Current().Recipe(e.Recipe)
	if err != nil {
		return nil, err
	}
	return workloads(r, e.Params)
}

// handleTimer runs a check or a settled finish.
func (m *monitor) handleTimer(ctx context.Context, msg *bus.Message) error {
	switch kind := msg.Attributes[AttrTimer]; kind {
	case TimerCheck:
		e, err := events.DecodeFleetBootstrapped(msg.Payload)
		if err != nil {
			return err
		}
		misses, err := decodeMisses(msg.Attributes[AttrMisses])
		if err != nil {
			return bus.Permanent(err)
		}
		progress, err := decodeProgress(msg.Attributes[AttrProgress])
		if err != nil {
			return bus.Permanent(err)
		}
		return m.check(ctx, e, msg.Payload, misses, progress)
	case TimerSettle:
		jf, err := events.DecodeJobFinished(msg.Payload)
		if err != nil {
			return err
		}
		return m.finish(ctx, jf, msg.ReceiveCount)
	default:
		return bus.Permanent(fmt.Errorf("unknown monitor timer %s=%q", AttrTimer, kind))
	}
}

// check looks at every instance of a fleet once, then settles the job's verdict or arms
// the next check.
func (m *monitor) check(ctx context.Context, e events.FleetBootstrapped, body []byte, misses map[string]int, progress map[string]progressMark) error {
	log := bus.Logger(ctx).With("fleet_id", e.FleetID)
	now := m.now()
	m.fleets.put(e.FleetID, body)
	// The job's record: a cancel, lost instances and the replacements watched with these.
	rec, err := m.ledger.Get(ctx, e.JobID)
	if err != nil {
		return fmt.Errorf("checking fleet %s: %w", e.FleetID, err)
	}
	if rec.DoneAt(ledger.Finished) != "" {
		log.Info("job already finished: stopping the checks")
		m.fleets.drop(e.FleetID)
		return nil
	}
	cancel, cancelled := rec.Cancelled()
	vw, viewErr := viewOf(e, rec)
	if viewErr == nil {
		e = vw.Event
	}
	ids := instanceIDs(e)
	states, refused, err := m.describe(ctx, e.FleetID, ids)
	if err != nil {
		return fmt.Errorf("checking fleet %s: %w", e.FleetID, err)
	}
	owned := ownedIDs(ids, states) // the only instances probed and tagged
	pending, pendingWhy := rec.ReplacementPending()
	var v verdict
	var wl []recipe.Workload
	switch gone := goneInstances(states, ids); {
	case viewErr != nil:
		v = verdict{Done: true, Outcome: events.OutcomeFailed, Reason: "monitor cannot read the job's replacement instances: " + viewErr.Error()}
	case len(refused) > 0:
		v = verdict{Done: true, Outcome: events.OutcomeFailed, Reason: firstRefusal(ids, refused)}
	case finished(states):
		log.Info("job already finished: stopping the checks")
		m.fleets.drop(e.FleetID)
		return nil
	case cancelled:
		log.Info("job cancelled by an operator: ending it", "cancelled_by", cancel.By, "reason", cancel.Reason)
		v = verdict{Done: true, Outcome: events.OutcomeCancelled, Reason: cancel.Text()}
	case len(gone) > 0:
		// Lost, not fatal: told once (the planner replaces it, the reaper archives what it
		// can), then the next check watches the others and the replacements.
		for _, id := range gone {
			st := states[id]
			cause := events.LostTerminated
			if st.state == ec2types.InstanceStateNameStopping || st.state == ec2types.InstanceStateNameStopped {
				cause = events.LostStopped
			}
			l := lostInstance{ID: id, Revision: revisionOf(tags.Map(st.instance.Tags)), Cause: cause, Instance: st.instance,
				Detail: fmt.Sprintf("found %s by the monitor's check before its workloads finished", st.state)}
			if err := m.lose(ctx, e.JobID, e.FleetID, l); err != nil {
				return fmt.Errorf("checking fleet %s: %w", e.FleetID, err)
			}
		}
		attrs := map[string]string{AttrTimer: TimerCheck, AttrMisses: encodeMisses(misses)}
		if p := encodeProgress(progress); p != "" {
			attrs[AttrProgress] = p
		}
		if err := m.pub.After(ctx, bus.Monitor, m.cfg.Interval, body, attrs); err != nil {
			return fmt.Errorf("arming the next check of fleet %s: %w", e.FleetID, err)
		}
		return nil
	default:
		if rv, failed := bootstrapVerdict(events.FleetBootstrapped{Instances: vw.Replacements}); failed {
			rv.Reason = "replacement " + rv.Reason
			v = rv
			break
		}
		wl, err = m.workloadsOf(e)
		if err != nil {
			v = verdict{Done: true, Outcome: events.OutcomeFailed, Reason: "monitor cannot watch the fleet: " + err.Error()}
			break
		}
		pastDeadline := now.After(e.DeadlineAt.Add(m.cfg.Grace))
		targets := m.targets(ctx, e, states)
		checks := probeAll(ctx, m.prober, targets, wl, pastDeadline, m.cfg.Parallel)
		for _, c := range checks {
			if c.Err != nil {
				log.Warn("instance unreachable", "instance_id", c.ID, "misses", misses[c.ID]+1, "max_misses", m.cfg.MaxMisses, "error", c.Err.Error())
			}
		}
		v, misses = decide(checks, checkState{Misses: misses, MaxMisses: m.cfg.MaxMisses, Deadline: e.DeadlineAt, Grace: m.cfg.Grace, PastDeadline: pastDeadline})
		v = withReplacements(v, len(checks), pending, pendingWhy, pastDeadline, rec)
		if !v.Done && pending {
			log.Info("waiting for replacement instances", "why", pendingWhy, "alive", v.Alive)
		}
		m.metrics.Add(metrics.FleetAlive(e.JobID, e.FleetID, v.Alive))
		if !v.Done {
			var sv verdict
			var w recipe.Workload
			sv, w, progress = stalled(checks, wl, progress, now, m.taskCount(ctx, e.JobID, wl))
			if sv.Done { // the stalled workload's log tail, read now
				for _, tg := range targets {
					if tg.ID == sv.FailingInstance {
						c := m.prober.probe(ctx, tg, []recipe.Workload{w}, true)
						if len(c.Steps) == 1 {
							sv.LogTail = c.Steps[0].Tail
						}
					}
				}
				sv.Alive = v.Alive
				v = sv
			}
		}
	}

	if v.Done {
		if wl == nil { // the instances are gone or unknown: their logs may still be archived
			wl, _ = m.workloadsOf(e)
		}
		jf := jobFinished(e, v, wl, now)
		settled, err := encodeFinished(jf)
		if err != nil {
			return fmt.Errorf("settling fleet %s: %w", e.FleetID, err)
		}
		if err := m.pub.After(ctx, bus.Monitor, m.cfg.Settle, settled, map[string]string{AttrTimer: TimerSettle}); err != nil {
			return fmt.Errorf("settling fleet %s: %w", e.FleetID, err)
		}
		log.Info("verdict reached: waiting for the last task reports", "outcome", v.Outcome, "reason", v.Reason, "settle", m.cfg.Settle)
		return nil
	}

	expires := now.Add(m.cfg.Lease).UTC().Format(time.RFC3339)
	if err := m.tag(ctx, owned, tags.LeaseExpires, expires); err != nil {
		log.Warn("refreshing leases; retrying at the next check", "error", err.Error())
	}
	attrs := map[string]string{AttrTimer: TimerCheck, AttrMisses: encodeMisses(misses)}
	if p := encodeProgress(progress); p != "" {
		attrs[AttrProgress] = p
	}
	if err := m.pub.After(ctx, bus.Monitor, m.cfg.Interval, body, attrs); err != nil {
		return fmt.Errorf("arming the next check of fleet %s: %w", e.FleetID, err)
	}
	log.Debug("fleet checked", "alive", v.Alive, "lease_expires", expires)
	return nil
}

// taskCount is the job's count of reported tasks (succeeded and failed) in CloudWatch, after
// flushing this replica's metrics, for a workload whose progress signal it is; -1 when none
// is, or the count cannot be read (no progress is then judged at this check).
func (m *monitor) taskCount(ctx context.Context, jobID string, wl []recipe.Workload) int64 {
	if !tasksSignal(wl) {
		return -1
	}
	log := bus.Logger(ctx)
	if err := m.metrics.Flush(ctx); err != nil {
		log.Warn("flushing metrics before reading the task count", "error", err.Error())
	}
	now := m.now()
	totals, err := metrics.JobTotals(ctx, m.stats, jobID, now.Add(-(events.MaxDeadline + m.cfg.Grace + time.Hour)), now.Add(time.Minute))
	if err != nil {
		log.Warn("task count unreadable: progress not judged at this check", "error", err.Error())
		return -1
	}
	return int64(totals.Succeeded + totals.Failed)
}

// targets says how to reach each instance of the fleet: at the address EC2 gives
// (pkg/sshaddr; never the event's), pinning the fleet's derived host key or, for a template
// whose instances make their own, the key each one printed to its console. states holds
// only the fleet's verified instances.
func (m *monitor) targets(ctx context.Context, e events.FleetBootstrapped, states map[string]instanceState) []target {
	user := opsconfig.DefaultUser
	var tmpl opsconfig.Template
	if e.Template != "" {
		if t, err := m.ops.Current().Template(e.Template); err == nil {
			tmpl = t
			if t.User != "" {
				user = t.User
			}
		}
	}
	mode := sshaddr.Mode{Local: m.cfg.LocalMode, PublicIP: tmpl.PublicAddress()}
	// Validate checked the host key's format.
	fleetKey, _, _, _, _ := ssh.ParseAuthorizedKey([]byte(e.HostKey))
	out := make([]target, len(e.Instances))
	for i, in := range e.Instances {
		t := target{ID: in.ID, User: user, HostKey: fleetKey}
		own := in.HostKey != "" // a replacement's key (Validate checked its format)
		if own {
			t.HostKey, _, _, _, _ = ssh.ParseAuthorizedKey([]byte(in.HostKey))
		}
		st, ok := states[in.ID]
		if !ok {
			t.Err = fmt.Errorf("instance %s is not verified: not contacted", in.ID)
			out[i] = t
			continue
		}
		if t.Endpoint, t.Err = mode.Of(st.instance); t.Err != nil {
			out[i] = t
			continue
		}
		if tmpl.InstanceHostKeys() && !own {
			t.HostKey, t.Err = m.consoleKey(ctx, in.ID)
		}
		if t.HostKey == nil && t.Err == nil {
			t.Err = fmt.Errorf("no host key to pin for %s", in.ID)
		}
		out[i] = t
	}
	return out
}

// consoleKey returns the host key an instance printed to its console, read once: the
// instance was bootstrapped, so the block is there; a read that fails counts as a miss.
func (m *monitor) consoleKey(ctx context.Context, id string) (ssh.PublicKey, error) {
	if k, ok := m.consoleKeys.Load(id); ok {
		return k.(ssh.PublicKey), nil
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.SSHTimeout)
	defer cancel()
	k, err := verify.ConsoleHostKey(ctx, m.ec2, id, verify.ConsolePoll{First: 200 * time.Millisecond, Max: time.Second})
	if err != nil {
		return nil, err
	}
	m.consoleKeys.Store(id, k)
	return k, nil
}

// finish claims the job's finished stage in the ledger, reads the job's task totals (after
// flushing this replica's metrics) and publishes JobFinished: once per job, by the claim's
// winner; a job whose finished stage is done or held elsewhere is left alone. When
// CloudWatch stays unreadable until the message's last delivery, JobFinished goes out with
// zero totals rather than never, so that the fleet is still reaped.
func (m *monitor) finish(ctx context.Context, jf events.JobFinished, receiveCount int) error {
	log := bus.Logger(ctx).With("fleet_id", jf.FleetID)
	ids := make([]string, len(jf.Instances))
	for i, in := range jf.Instances {
		ids[i] = in.ID
	}
	claim, err := m.ledger.Claim(ctx, jf.JobID, ledger.Finished)
	var taken *ledger.TakenError
	if errors.As(err, &taken) && taken.DoneAt != "" {
		log.Debug("job already finished: not publishing JobFinished again", "reason", err.Error())
		return nil
	}
	if taken != nil {
		// Held by another finish (a settle timer, an exit report): this message stays the
		// backstop until that one is done, since the holder's own message may be dropped
		// on its redelivery (an exit report reaching a replica that does not watch the
		// fleet). Retried: it finds the stage done, or takes it over from a dead holder.
		return fmt.Errorf("finishing job %s: %w", jf.JobID, err)
	}
	if err != nil {
		return fmt.Errorf("finishing job %s: %w", jf.JobID, err)
	}
	defer claim.Release(ctx)
	if len(ids) > 0 {
		states, refused, err := m.describe(ctx, jf.FleetID, ids)
		if err != nil {
			return fmt.Errorf("finishing job %s: %w", jf.JobID, err)
		}
		if finished(states) {
			log.Info("job already finished: not publishing JobFinished again")
			return nil
		}
		// Only the fleet's own instances are handed to the reaper and tagged.
		if len(refused) > 0 {
			log.Warn("leaving out instances that are not the fleet's", "refused", refused)
		}
		jf = onlyOwned(jf, states)
		ids = ownedIDs(ids, states)
	}
	lastTry := receiveCount >= bus.MaxReceiveCount-1
	if err := m.metrics.Flush(ctx); err != nil {
		log.Warn("flushing metrics before reading the totals", "error", err.Error())
	}
	now := m.now()
	start := now.Add(-(events.MaxDeadline + m.cfg.Grace + m.cfg.Interval + m.cfg.Settle + time.Hour))
	totals, err := metrics.JobTotals(ctx, m.stats, jf.JobID, start, now.Add(time.Minute))
	if err != nil {
		if !lastTry {
			return fmt.Errorf("finishing job %s: %w", jf.JobID, err)
		}
		log.Error("task totals unreadable; publishing JobFinished without them", "error", err.Error())
	}
	jf.TasksSucceeded = min(totals.Succeeded, events.MaxItems)
	jf.TasksFailed = min(totals.Failed, events.MaxItems)
	jf.Header.Time = now.UTC()
	body, err := encodeFinished(jf)
	if err != nil {
		return bus.Permanent(fmt.Errorf("finishing job %s: %w", jf.JobID, err))
	}
	if err := claim.Checkpoint(); err != nil {
		return err
	}
	if err := m.pub.PublishBody(ctx, jf, body); err != nil {
		return fmt.Errorf("finishing job %s: %w", jf.JobID, err)
	}
	if err := claim.Done(ctx, ledger.Fields{"outcome": jf.Outcome, "reason": jf.Reason,
		"finished_tasks_succeeded": jf.TasksSucceeded, "finished_tasks_failed": jf.TasksFailed}); err != nil {
		log.Error("recording JobFinished in the ledger", "error", err.Error())
	}
	log.Info("job finished", "outcome", jf.Outcome, "reason", jf.Reason, "failing_instance", jf.FailingInstance,
		"tasks_succeeded", jf.TasksSucceeded, "tasks_failed", jf.TasksFailed)
	if err := m.tag(ctx, ids, tags.Stage, StageFinished); err != nil {
		log.Warn("tagging instances finished", "error", err.Error())
	}
	m.holdLeases(ctx, log, jf, ids)
	return nil
}

// holdLeases extends the leases of a finished job's instances to the end of the
// operator's hold on it, if one applies to its outcome: capped by the stack's longest hold
// (SORTIE_MAX_HOLD) and by each instance's template TTL from its launch. The reaper keeps
// them until then; the sweep takes them when the lease runs out.
func (m *monitor) holdLeases(ctx context.Context, log *slog.Logger, jf events.JobFinished, ids []string) {
	rec, err := m.ledger.Get(ctx, jf.JobID)
	if err != nil {
		log.Warn("reading the job's hold; its instances keep their lease", "error", err.Error())
		return
	}
	h := rec.Hold()
	now := m.now()
	if !h.Active(now, jf.Outcome) || len(ids) == 0 {
		return
	}
	end := m.cfg.HoldEnd(h)
	var ttl time.Duration
	if t, err := m.ops.Current().Template(jf.Template); err == nil {
		ttl = t.TTL.Std()
	}
	states, _, err := m.describe(ctx, jf.FleetID, ids)
	if err != nil {
		log.Warn("describing the held instances; they keep their lease", "error", err.Error())
		return
	}
	for _, id := range ids {
		lease := end
		if st, ok := states[id]; ok && ttl > 0 && st.instance.LaunchTime != nil {
			lease = minTime(lease, st.instance.LaunchTime.Add(ttl))
		}
		if err := m.tag(ctx, []string{id}, tags.LeaseExpires, lease.UTC().Format(time.RFC3339)); err != nil {
			log.Warn("extending a held instance's lease", "instance_id", id, "error", err.Error())
			continue
		}
		log.Info("instance held", "instance_id", id, "lease_expires", lease.UTC(), "hold_by", h.By, "hold_reason", h.Reason)
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// instanceState is what EC2 says of one instance of the fleet.
type instanceState struct {
	state    ec2types.InstanceStateName
	stage    string
	instance ec2types.Instance
}

// describe returns what EC2 says of the fleet's instances among ids, verified to be this
// stack's and this fleet's (pkg/verify), and why each other id is refused.
func (m *monitor) describe(ctx context.Context, fleetID string, ids []string) (map[string]instanceState, map[string]string, error) {
	found, err := verify.Fleet(ctx, m.ec2, verify.Owner{Stack: m.cfg.Prefix, Fleet: fleetID}, ids)
	if err != nil {
		return nil, nil, err
	}
	out := make(map[string]instanceState, len(found.Owned))
	for id, in := range found.Owned {
		st := instanceState{instance: in}
		if in.State != nil {
			st.state = in.State.Name
		}
		for _, t := range in.Tags {
			if aws.ToString(t.Key) == tags.Stage {
				st.stage = aws.ToString(t.Value)
			}
		}
		out[id] = st
	}
	return out, found.Refused, nil
}

// ownedIDs returns the ids, in order, that states holds.
func ownedIDs(ids []string, states map[string]instanceState) []string {
	var out []string
	for _, id := range ids {
		if _, ok := states[id]; ok {
			out = append(out, id)
		}
	}
	return out
}

// firstRefusal is the reason the first refused id (in fleet order) is not acted on.
func firstRefusal(ids []string, refused map[string]string) string {
	for _, id := range ids {
		if r, ok := refused[id]; ok {
			if len(refused) > 1 {
				return fmt.Sprintf("%s (and %d more instances refused)", r, len(refused)-1)
			}
			return r
		}
	}
	return ""
}

// onlyOwned returns jf listing only the instances states holds.
func onlyOwned(jf events.JobFinished, states map[string]instanceState) events.JobFinished {
	var kept []events.InstanceRef
	for _, in := range jf.Instances {
		if _, ok := states[in.ID]; ok {
			kept = append(kept, in)
		}
	}
	jf.Instances = kept
	if _, ok := states[jf.FailingInstance]; !ok {
		jf.FailingInstance = ""
	}
	return jf
}

// finished reports whether any instance carries the finished stage: JobFinished is out.
func finished(states map[string]instanceState) bool {
	for _, s := range states {
		if s.stage == StageFinished {
			return true
		}
	}
	return false
}

// goneInstance returns the first instance (in fleet order) that is shutting down,
// stopped or terminated, or missing from EC2's answer.
func goneInstance(states map[string]instanceState, ids []string) string {
	for _, id := range ids {
		if s, ok := states[id]; ok && gone(s.state) {
			return id
		}
	}
	return ""
}

// maxTagResources is how many resources one CreateTags call takes.
const maxTagResources = 1000

func (m *monitor) tag(ctx context.Context, ids []string, key, value string) error {
	for i := 0; i < len(ids); i += maxTagResources {
		_, err := m.ec2.CreateTags(ctx, &ec2.CreateTagsInput{
			Resources: ids[i:min(i+maxTagResources, len(ids))],
			Tags:      []ec2types.Tag{{Key: aws.String(key), Value: aws.String(value)}},
		})
		if err != nil {
			return fmt.Errorf("tagging %s=%s: %w", key, value, err)
		}
	}
	return nil
}

func instanceIDs(e events.FleetBootstrapped) []string {
	ids := make([]string, len(e.Instances))
	for i, in := range e.Instances {
		ids[i] = in.ID
	}
	return ids
}

// maxCachedFleets bounds a replica's fleet cache; past it the oldest entry goes (its
// exits are then noticed by the periodic check).
const maxCachedFleets = 10000

// fleetCache maps fleet ids to their FleetBootstrapped bodies.
type fleetCache struct {
	mu    sync.Mutex
	max   int
	order []string
	m     map[string][]byte
}

func newFleetCache(max int) *fleetCache { return &fleetCache{max: max, m: map[string][]byte{}} }

// A nil cache holds nothing.
func (c *fleetCache) put(id string, body []byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[id]; !ok {
		c.order = append(c.order, id)
	}
	c.m[id] = body
	for len(c.order) > c.max {
		delete(c.m, c.order[0])
		c.order = c.order[1:]
	}
}

func (c *fleetCache) get(id string) ([]byte, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.m[id]
	return b, ok
}

func (c *fleetCache) drop(id string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[id]; ok {
		delete(c.m, id)
		c.order = slices.DeleteFunc(c.order, func(s string) bool { return s == id })
	}
}
