package monitor

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/ec2events"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// Lost instances. EC2's notices (EventBridge → the stack's EC2 events queue) say when a spot
// instance is about to be interrupted or an instance is going away; the check is the
// backstop for an instance found gone without a notice. Either way the monitor records the
// loss in the ledger once and publishes InstanceLost: the reaper archives the instance's
// logs while it still runs, the planner plans replacements. The job goes on with the
// instances left and the replacements (merged into its check, see view), and fails only if
// it cannot finish without them.

// The ledger fields the monitor records when it starts watching a job: what InstanceLost
// carries for the reaper to reach a lost instance of the first plan.
const (
	fieldWatchTemplate = "watch_template"
	fieldWatchHostKey  = "watch_host_key"
	fieldWatchKeyName  = "watch_key_name"
	fieldWatchLogs     = "watch_logs" // newline-separated
)

// watchFields are the ledger fields recorded with the watching stage.
func watchFields(e events.FleetBootstrapped, logs []string) ledger.Fields {
	return ledger.Fields{
		fieldWatchTemplate: e.Template, fieldWatchHostKey: e.HostKey, fieldWatchKeyName: e.KeyName,
		fieldWatchLogs: strings.Join(logs, "\n"),
	}
}

// handleEC2Notice reads one of EC2's notices. A notice that an instance of a job being
// watched is going away records the loss and publishes InstanceLost; anything else (other
// stacks' instances, Sortie's own terminations of finished jobs, instances starting) is
// dropped. A body that is not an EC2 notice at all is dead-lettered with the reason.
func (m *monitor) handleEC2Notice(ctx context.Context, msg *bus.Message) error {
	n, err := ec2events.Parse(msg.Payload)
	if errors.Is(err, ec2events.ErrNotEC2) {
		bus.Logger(ctx).Debug("not an EC2 notice the monitor reads: dropped", "reason", err.Error())
		return nil
	}
	if err != nil {
		return bus.Permanent(err)
	}
	if !n.Lost() {
		return nil
	}
	log := bus.Logger(ctx).With("instance_id", n.InstanceID, "notice", n.Kind, "state", n.State)
	in, ok, err := m.ownInstance(ctx, n.InstanceID)
	if err != nil {
		return fmt.Errorf("reading EC2 notice for %s: %w", n.InstanceID, err)
	}
	if !ok {
		log.Debug("EC2 notice for an instance that is not this stack's: dropped")
		return nil
	}
	if why := disagrees(n, in); why != "" {
		// The queue admits only the stack's rule, but a notice is acted on only when EC2
		// itself bears it out: a forged one must not buy a replacement fleet.
		log.Warn("EC2 notice not borne out by EC2: dropped", "reason", why)
		return nil
	}
	tg := tags.Map(in.Tags)
	jobID, fleetID := tg[tags.JobID], tg[tags.Fleet]
	if jobID == "" || fleetID == "" {
		log.Warn("EC2 notice for an instance of this stack without job or fleet tags: dropped")
		return nil
	}
	cause, detail := events.LostTerminated, fmt.Sprintf("%s: state %s", ec2events.DetailTypeStateChange, n.State)
	switch {
	case n.Kind == ec2events.KindSpotWarning:
		cause, detail = events.LostSpotInterruption, fmt.Sprintf("%s: instance-action %s", ec2events.DetailTypeSpotWarning, n.Action)
	case n.State == "stopping" || n.State == "stopped":
		cause = events.LostStopped
	}
	lost := lostInstance{ID: n.InstanceID, Revision: revisionOf(tg), Cause: cause, Detail: detail, Deadline: n.Deadline(), Instance: in}
	return m.lose(bus.WithIDs(ctx, jobID, bus.CorrelationID(ctx)), jobID, fleetID, lost)
}

// lostInstance is an instance found going or gone.
type lostInstance struct {
	ID       string
	Revision int
	Cause    string
	Detail   string
	Deadline time.Time // a spot warning's interruption time; zero when gone
	Instance ec2types.Instance
}

// lose records the loss of an instance of a running job and publishes its InstanceLost,
// once: a job that has finished (Sortie's own reaping) or was cancelled is left alone, as
// is an instance already told of. A job still being bootstrapped counts: a warning may
// come at any time, and the instance must be archived and replaced all the same (its
// bootstrap result no longer decides the job: see handleBootstrapped).
func (m *monitor) lose(ctx context.Context, jobID, fleetID string, l lostInstance) error {
	log := bus.Logger(ctx).With("job_id", jobID, "instance_id", l.ID, "cause", l.Cause)
	rec, err := m.ledger.Get(ctx, jobID)
	if err != nil {
		return fmt.Errorf("instance %s lost: %w", l.ID, err)
	}
	_, cancelled := rec.Cancelled()
	switch {
	case rec.DoneAt(ledger.Planned) == "":
		log.Info("instance lost of a job the ledger has no plan for: nothing to replace")
		return nil
	case rec.DoneAt(ledger.Finished) != "" || rec.DoneAt(ledger.Terminated) != "" || cancelled:
		log.Debug("instance of a finished or cancelled job: nothing to replace")
		return nil
	case rec.LostSent(l.ID):
		log.Debug("instance loss told before")
		return nil
	}
	if err := m.ledger.MarkLost(ctx, jobID, l.ID, l.Cause); err != nil {
		return fmt.Errorf("instance %s lost: %w", l.ID, err)
	}
	e := events.InstanceLost{
		Header:         events.NewHeader(jobID, bus.CorrelationID(ctx), m.now()),
		FleetID:        fleetID,
		PlanRevision:   max(l.Revision, 1),
		InstanceID:     l.ID,
		Cause:          l.Cause,
		NoticeDeadline: l.Deadline,
		Detail:         clipText(l.Detail, events.MaxTextBytes),
		Template:       rec.Attrs[fieldWatchTemplate],
		HostKey:        rec.Attrs[fieldWatchHostKey],
		KeyName:        rec.Attrs[fieldWatchKeyName],
	}
	if e.Header.CorrelationID == "" {
		e.Header.CorrelationID = jobID
	}
	for _, p := range strings.Split(rec.Attrs[fieldWatchLogs], "\n") {
		if p != "" {
			e.Logs = append(e.Logs, p)
		}
	}
	if rec.DoneAt(ledger.Watching) == "" {
		// Lost during the bootstrap: what the watch would have recorded, from EC2 and
		// the plan.
		tg := tags.Map(l.Instance.Tags)
		e.Template, e.KeyName, e.HostKey = tg[tags.Template], aws.ToString(l.Instance.KeyName), tg[tags.HostKey]
		e.Logs = m.planLogs(rec)
		if t, err := m.ops.Current().Template(e.Template); err == nil && e.KeyName == "" {
			e.KeyName = t.KeyName
		}
	}
	if l.Revision > 1 {
		e.HostKey = ""
		if insts, err := rec.RevisionInstances(); err == nil {
			for _, in := range insts {
				if in.ID == l.ID {
					e.HostKey = in.HostKey
				}
			}
		}
	}
	if err := m.pub.Publish(ctx, e); err != nil {
		return fmt.Errorf("instance %s lost: %w", l.ID, err)
	}
	if err := m.ledger.MarkLostSent(ctx, jobID, l.ID); err != nil {
		log.Warn("recording the loss as told", "error", err.Error())
	}
	log.Warn("instance lost: replacing it", "detail", l.Detail, "notice_deadline", l.Deadline)
	return nil
}

// ownInstance describes an instance, if it is this stack's.
func (m *monitor) ownInstance(ctx context.Context, id string) (ec2types.Instance, bool, error) {
	out, err := m.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{
		{Name: aws.String("instance-id"), Values: []string{id}},
		{Name: aws.String("tag:" + tags.Stack), Values: []string{m.cfg.Prefix}},
	}})
	if err != nil {
		return ec2types.Instance{}, false, err
	}
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			if aws.ToString(in.InstanceId) == id && tags.Map(in.Tags)[tags.Stack] == m.cfg.Prefix {
				return in, true, nil
			}
		}
	}
	return ec2types.Instance{}, false, nil
}

// revisionOf reads an instance's plan revision tag (1 when it has none).
func revisionOf(tg map[string]string) int {
	n, err := strconv.Atoi(tg[tags.PlanRevision])
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// view is what the job's check watches: the first plan's instances and those of every
// replacement revision bootstrapped since (each with its own host key), less the lost ones.
type view struct {
	Event events.FleetBootstrapped // Instances: the instances to watch
	// Replacements are the bootstrapped instances of later revisions, also in Event.
	Replacements []events.InstanceResult
	Lost         map[string]string // lost instance → cause
}

// viewOf merges the job's record into the first plan's FleetBootstrapped.
func viewOf(e events.FleetBootstrapped, rec ledger.Record) (view, error) {
	v := view{Lost: rec.Lost()}
	insts, err := rec.RevisionInstances()
	if err != nil {
		return view{}, err
	}
	out := e
	out.Instances = nil
	for _, in := range e.Instances {
		if _, lost := v.Lost[in.ID]; !lost {
			out.Instances = append(out.Instances, in)
		}
	}
	for _, ri := range insts {
		if _, lost := v.Lost[ri.ID]; lost || slices.ContainsFunc(out.Instances, func(in events.InstanceResult) bool { return in.ID == ri.ID }) {
			continue
		}
		r := events.InstanceResult{ID: ri.ID, SSHEndpoint: ri.Endpoint, HostKey: ri.HostKey, OK: ri.OK, Error: ri.Error}
		if !r.OK && r.Error == "" {
			r.Error = "bootstrap failed"
		}
		out.Instances = append(out.Instances, r)
		v.Replacements = append(v.Replacements, r)
	}
	v.Event = out
	return v, nil
}

// lostReason describes the lost instances and what the planner answered for each.
func lostReason(rec ledger.Record) string {
	lost := rec.Lost()
	var ids []string
	for id := range lost {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var parts []string
	for _, id := range ids {
		p := fmt.Sprintf("%s (%s", id, lost[id])
		if by := rec.LostBy(id); by != "" {
			if _, err := strconv.Atoi(by); err == nil {
				p += ", replaced by revision " + by
			} else {
				p += ", " + by
			}
		}
		parts = append(parts, p+")")
	}
	return strings.Join(parts, "; ")
}

// recordReplacement records a replacement revision's bootstrapped instances for the job's
// check to merge in.
func (m *monitor) recordReplacement(ctx context.Context, e events.FleetBootstrapped) error {
	log := bus.Logger(ctx).With("fleet_id", e.FleetID, "plan_revision", e.Revision())
	insts := make([]ledger.RevisionInstance, len(e.Instances))
	for i, in := range e.Instances {
		insts[i] = ledger.RevisionInstance{ID: in.ID, Endpoint: in.SSHEndpoint, HostKey: cmp.Or(in.HostKey, e.HostKey), OK: in.OK, Error: clipText(in.Error, 512)}
	}
	if err := m.ledger.RecordBootstrapped(ctx, e.JobID, e.Revision(), insts); err != nil {
		return fmt.Errorf("recording replacement revision %d of fleet %s: %w", e.Revision(), e.FleetID, err)
	}
	log.Info("replacement instances bootstrapped: watched with the job's other instances", "instances", len(insts))
	return nil
}

// goneInstances returns, in fleet order, the instances that are shutting down, stopped or
// terminated.
func goneInstances(states map[string]instanceState, ids []string) []string {
	var out []string
	for _, id := range ids {
		if s, ok := states[id]; ok && gone(s.state) {
			out = append(out, id)
		}
	}
	return out
}

func gone(s ec2types.InstanceStateName) bool {
	switch s {
	case ec2types.InstanceStateNameShuttingDown, ec2types.InstanceStateNameTerminated,
		ec2types.InstanceStateNameStopping, ec2types.InstanceStateNameStopped:
		return true
	}
	return false
}

// withReplacements amends a check's verdict for lost instances: every workload watched
// having exited 0 does not finish a job while a replacement is on its way (past the
// deadline it times out waiting for it), nor one whose instances were all lost with none
// replacing them; a success names the instances lost and replaced.
func withReplacements(v verdict, watched int, pending bool, why string, pastDeadline bool, rec ledger.Record) verdict {
	if !v.Done || v.Outcome != events.OutcomeSucceeded {
		return v
	}
	lost := lostReason(rec)
	switch {
	case pending && pastDeadline:
		return verdict{Done: true, Outcome: events.OutcomeTimedOut, Alive: v.Alive,
			Reason: fmt.Sprintf("deadline passed while waiting for a replacement: %s; lost: %s", why, lost)}
	case pending:
		return verdict{Alive: v.Alive}
	case watched == 0:
		return verdict{Done: true, Outcome: events.OutcomeFailed,
			Reason: "every instance of the job was lost and none replaced it: " + lost}
	case lost != "":
		v.Reason += "; instances lost on the way: " + lost
	}
	return v
}

// planLogs are the workload logs of the job's recipe rendered with its parameters, as the
// planner recorded them; none when they cannot be read.
func (m *monitor) planLogs(rec ledger.Record) []string {
	r, err := m.ops.Current().Recipe(rec.Attrs["recipe"])
	if err != nil {
		return nil
	}
	var params map[string]string
	if s := rec.Attrs["params"]; s != "" {
		if err := json.Unmarshal([]byte(s), &params); err != nil {
			return nil
		}
	}
	wl, err := workloads(r, params)
	if err != nil {
		return nil
	}
	return logPaths(wl)
}

// disagrees says why EC2's description of an instance contradicts a notice about it ("" when
// it does not): a spot warning for an instance that is not spot, a state change to a state
// the instance is not in, nor past.
func disagrees(n ec2events.Notice, in ec2types.Instance) string {
	var state ec2types.InstanceStateName
	if in.State != nil {
		state = in.State.Name
	}
	switch n.Kind {
	case ec2events.KindSpotWarning:
		if in.InstanceLifecycle != ec2types.InstanceLifecycleTypeSpot {
			return "a spot interruption warning for an instance that is not a spot instance"
		}
	case ec2events.KindStateChange:
		if !gone(state) {
			return fmt.Sprintf("a notice that the instance is %s, but EC2 says it is %s", n.State, cmp.Or(string(state), "in no state"))
		}
	}
	return ""
}
