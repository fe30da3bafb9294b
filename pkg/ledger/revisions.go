package ledger

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// Replacing lost instances. A fleet's first plan is revision 1; an instance lost while the
// job runs (a spot interruption, a termination Sortie did not make) is recorded here by the
// monitor, and the planner covers it: with a plan of the next revision (replacement
// instances) or with a reason it needs none. The stages of revision n > 1 are claimed as
// "<stage>@n", so a replacement fleet passes the pipeline like the first and every stage
// still acts once. The monitor keeps one check chain per job and watches the instances of
// every revision together, reading them from here.
//
// Attributes on the job's item:
//
//	plan_revision      the highest revision planned (absent: 1)
//	lost_<id>          the cause an instance was lost (events.Lost*), set once
//	lostsent_<id>      "1" once InstanceLost was published for it
//	lostby_<id>        the revision replacing it ("2"), or "none: <why>"
//	rev<n>_state       planned, launched, bootstrapped, or "failed: <why>"
//	rev<n>_instances   the bootstrapped instances of revision n (JSON RevisionInstance list)

// Revision states.
const (
	RevPlanned      = "planned"
	RevLaunched     = "launched"
	RevBootstrapped = "bootstrapped"
	RevFailed       = "failed" // followed by ": <why>"
)

// AttrPlanRevision is the highest plan revision of a job.
const AttrPlanRevision = "plan_revision"

// StageAt is stage s of plan revision rev: s itself for the first plan, "s@rev" after.
func StageAt(s Stage, rev int) Stage {
	if rev <= 1 {
		return s
	}
	return Stage(string(s) + "@" + strconv.Itoa(rev))
}

// ReservationID is the id a plan revision's capacity is reserved under: the job id for the
// first plan, "<job id>#r<rev>" for a replacement fleet (released with the job's: see
// Ledger.ReleaseAll).
func ReservationID(jobID string, rev int) string {
	if rev <= 1 {
		return jobID
	}
	return jobID + "#r" + strconv.Itoa(rev)
}

// ReleaseAll gives back the capacity of every plan revision of a job up to revs.
func (l *Ledger) ReleaseAll(ctx context.Context, jobID string, revs int) error {
	for rev := 1; rev <= max(revs, 1); rev++ {
		if err := l.Release(ctx, ReservationID(jobID, rev)); err != nil {
			return err
		}
	}
	return nil
}

// PlanRevision is the highest plan revision recorded for the job (1 when none is).
func (r Record) PlanRevision() int {
	n, err := strconv.Atoi(r.Attrs[AttrPlanRevision])
	if err != nil || n < 1 {
		return 1
	}
	return n
}

func lostAttr(id string) string     { return "lost_" + id }
func lostSentAttr(id string) string { return "lostsent_" + id }
func lostByAttr(id string) string   { return "lostby_" + id }
func revStateAttr(n int) string     { return "rev" + strconv.Itoa(n) + "_state" }
func revInstancesAttr(n int) string { return "rev" + strconv.Itoa(n) + "_instances" }

// set writes attributes of the job's item; with ifAbsent, each only where it is not set.
func (l *Ledger) set(ctx context.Context, jobID string, fields map[string]string, ifAbsent bool) error {
	names := map[string]string{"#job": AttrJobID}
	values := map[string]types.AttributeValue{":job": str(jobID)}
	expr := "SET #job = :job"
	for i, k := range slices.Sorted(maps.Keys(fields)) {
		n, p := fieldNames(i)
		names[n], values[p] = k, str(fields[k])
		if ifAbsent {
			expr += fmt.Sprintf(", %s = if_not_exists(%s, %s)", n, n, p)
		} else {
			expr += fmt.Sprintf(", %s = %s", n, p)
		}
	}
	_, err := l.cfg.API.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: aws.String(l.cfg.Table), Key: Key(jobID), UpdateExpression: aws.String(expr),
		ExpressionAttributeNames: names, ExpressionAttributeValues: values,
	})
	if err != nil {
		return fmt.Errorf("recording on job %s: %w", jobID, err)
	}
	return nil
}

// MarkLost records that an instance of the job was lost and why; the first cause stays.
func (l *Ledger) MarkLost(ctx context.Context, jobID, instanceID, cause string) error {
	return l.set(ctx, jobID, map[string]string{lostAttr(instanceID): cause}, true)
}

// MarkLostSent records that InstanceLost was published for the instance.
func (l *Ledger) MarkLostSent(ctx context.Context, jobID, instanceID string) error {
	return l.set(ctx, jobID, map[string]string{lostSentAttr(instanceID): "1"}, false)
}

// CoverLost records what replaces each lost instance: a revision number, or "none: why".
// An instance covered before keeps its first answer.
func (l *Ledger) CoverLost(ctx context.Context, jobID string, ids []string, by string) error {
	f := map[string]string{}
	for _, id := range ids {
		f[lostByAttr(id)] = by
	}
	if len(f) == 0 {
		return nil
	}
	return l.set(ctx, jobID, f, true)
}

// RevisionInstance is one bootstrapped instance of a replacement revision, as the monitor
// watches it.
type RevisionInstance struct {
	ID       string `json:"id"`
	Endpoint string `json:"endpoint"`
	HostKey  string `json:"host_key,omitempty"`
	OK       bool   `json:"ok"`
	Error    string `json:"error,omitempty"`
}

// SetRevisionState records a plan revision's state (RevPlanned, RevLaunched, or
// RevFailed with why).
func (l *Ledger) SetRevisionState(ctx context.Context, jobID string, rev int, state string) error {
	return l.set(ctx, jobID, map[string]string{revStateAttr(rev): state}, false)
}

// RecordBootstrapped records a replacement revision's bootstrapped instances.
func (l *Ledger) RecordBootstrapped(ctx context.Context, jobID string, rev int, instances []RevisionInstance) error {
	b, err := json.Marshal(instances)
	if err != nil {
		return fmt.Errorf("recording revision %d of job %s: %w", rev, jobID, err)
	}
	return l.set(ctx, jobID, map[string]string{revStateAttr(rev): RevBootstrapped, revInstancesAttr(rev): string(b)}, false)
}

// Lost returns the job's lost instances and their causes.
func (r Record) Lost() map[string]string {
	out := map[string]string{}
	for k, v := range r.Attrs {
		if id, ok := strings.CutPrefix(k, "lost_"); ok {
			out[id] = v
		}
	}
	return out
}

// LostSent reports whether InstanceLost was published for the instance.
func (r Record) LostSent(id string) bool { return r.Attrs[lostSentAttr(id)] != "" }

// LostBy is what replaces a lost instance: a revision number, "none: why", or "" while the
// planner has not answered.
func (r Record) LostBy(id string) string { return r.Attrs[lostByAttr(id)] }

// Uncovered lists, sorted, the lost instances the planner has not answered for.
func (r Record) Uncovered() []string {
	var out []string
	for id := range r.Lost() {
		if r.LostBy(id) == "" {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// RevisionState is a plan revision's state ("" when none is recorded).
func (r Record) RevisionState(rev int) string { return r.Attrs[revStateAttr(rev)] }

// RevisionInstances returns the bootstrapped instances of replacement revisions 2..
// PlanRevision, in revision order.
func (r Record) RevisionInstances() ([]RevisionInstance, error) {
	var out []RevisionInstance
	for rev := 2; rev <= r.PlanRevision(); rev++ {
		s := r.Attrs[revInstancesAttr(rev)]
		if s == "" {
			continue
		}
		var insts []RevisionInstance
		if err := json.Unmarshal([]byte(s), &insts); err != nil {
			return nil, fmt.Errorf("job %s revision %d: instances: %w", r.JobID, rev, err)
		}
		out = append(out, insts...)
	}
	return out, nil
}

// ReplacementPending says whether a replacement is still on its way, and what: a lost
// instance the planner has not answered for, or a planned replacement revision that is
// neither bootstrapped nor failed. A job with one pending is not finished by its other
// instances finishing.
func (r Record) ReplacementPending() (bool, string) {
	if u := r.Uncovered(); len(u) > 0 {
		return true, fmt.Sprintf("the planner has not answered for lost instance %s", strings.Join(u, ", "))
	}
	for rev := 2; rev <= r.PlanRevision(); rev++ {
		switch s := r.RevisionState(rev); {
		case s == RevBootstrapped, strings.HasPrefix(s, RevFailed):
		default:
			return true, fmt.Sprintf("replacement revision %d is %s", rev, cmp.Or(s, "not launched yet"))
		}
	}
	return false, ""
}

// fieldNames are the expression placeholders of the i-th field an update writes, of one
// width ("#f007", ":f007") so that no placeholder is a prefix of another: kumo substitutes
// placeholders as text, and "#f1" would rewrite the start of "#f10".
func fieldNames(i int) (name, value string) {
	return fmt.Sprintf("#f%03d", i), fmt.Sprintf(":f%03d", i)
}
