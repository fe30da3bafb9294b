package ledger

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/sortie-fleet/sortie/pkg/events"
)

// Attributes of an operator's hold and cancel on a job's item.
const (
	attrHoldUntil     = "hold_until"      // Unix milliseconds
	attrHoldBy        = "hold_by"         // who placed it
	attrHoldReason    = "hold_reason"     // why
	attrHoldAt        = "hold_at"         // when it was placed, RFC 3339
	attrHoldOnFailure = "hold_on_failure" // "1": it applies only if the job does not succeed
	attrHoldReleased  = "hold_released_at"
	attrCancelledAt   = "cancelled_at"
	attrCancelBy      = "cancelled_by"
	attrCancelReason  = "cancel_reason"
)

// ErrUnknownJob says the ledger has no record of a job id.
var ErrUnknownJob = errors.New("no such job in the ledger")

// ErrEnded says a job's fleet is terminated (or the job was rejected): there is nothing
// left to hold or cancel.
var ErrEnded = errors.New("job has ended")

// ErrCancelled says a job was cancelled before.
var ErrCancelled = errors.New("job already cancelled")

// Hold keeps a job's instances alive after the job ends, until Until.
type Hold struct {
	Until     time.Time
	By        string
	Reason    string
	At        time.Time
	OnFailure bool // applies only when the job does not succeed
	Released  bool // released before its end
}

// Active says whether the hold still keeps a job's instances at now, given the job's
// outcome ("" while it runs). A cancelled job is never held: cancel terminates.
func (h Hold) Active(now time.Time, outcome string) bool {
	if h.Until.IsZero() || h.Released || !now.Before(h.Until) || outcome == events.OutcomeCancelled {
		return false
	}
	return !h.OnFailure || outcome != events.OutcomeSucceeded
}

// Hold returns the job's hold (zero when none was placed).
func (r Record) Hold() Hold {
	ms, err := strconv.ParseInt(r.Attrs[attrHoldUntil], 10, 64)
	if err != nil {
		return Hold{}
	}
	h := Hold{Until: time.UnixMilli(ms), By: r.Attrs[attrHoldBy], Reason: r.Attrs[attrHoldReason],
		OnFailure: r.Attrs[attrHoldOnFailure] == "1", Released: r.Attrs[attrHoldReleased] != ""}
	h.At, _ = time.Parse(time.RFC3339Nano, r.Attrs[attrHoldAt])
	return h
}

// Cancel is an operator's cancel of a job.
type Cancel struct {
	At     time.Time
	By     string
	Reason string
}

// Cancelled returns the job's cancel and whether it was cancelled.
func (r Record) Cancelled() (Cancel, bool) {
	at := r.Attrs[attrCancelledAt]
	if at == "" {
		return Cancel{}, false
	}
	c := Cancel{By: r.Attrs[attrCancelBy], Reason: r.Attrs[attrCancelReason]}
	c.At, _ = time.Parse(time.RFC3339Nano, at)
	return c, true
}

// Text is how a cancel is told in events: "cancelled by WHO: WHY".
func (c Cancel) Text() string {
	s := "cancelled"
	if c.By != "" {
		s += " by " + c.By
	}
	if c.Reason != "" {
		s += ": " + c.Reason
	}
	return truncate(s, events.MaxTextBytes)
}

// PlaceHold holds the job's instances until h.Until once it ends (conditional: the job
// must not have ended; unless beforeSubmit, it must be known to the ledger). A later hold
// replaces an earlier one. beforeSubmit is for `submit --hold-on-failure`, which places
// the hold before the job is published.
func (l *Ledger) PlaceHold(ctx context.Context, jobID string, h Hold, beforeSubmit bool) error {
	now := l.cfg.Now()
	if !h.Until.After(now) {
		return fmt.Errorf("holding job %s: the hold ends at %s, in the past", jobID, h.Until.UTC().Format(time.RFC3339))
	}
	cond := "attribute_not_exists(#term) AND attribute_not_exists(#rej)"
	if !beforeSubmit {
		cond = "attribute_exists(#job) AND " + cond
	}
	onFailure := "0"
	if h.OnFailure {
		onFailure = "1"
	}
	_, err := l.cfg.API.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: aws.String(l.cfg.Table), Key: Key(jobID),
		UpdateExpression:    aws.String("SET #job = :job, #exp = :exp, #u = :u, #by = :by, #why = :why, #at = :at, #of = :of REMOVE #rel"),
		ConditionExpression: aws.String(cond),
		ExpressionAttributeNames: map[string]string{
			"#job": AttrJobID, "#exp": AttrExpires, "#u": attrHoldUntil, "#by": attrHoldBy, "#why": attrHoldReason,
			"#at": attrHoldAt, "#of": attrHoldOnFailure, "#rel": attrHoldReleased,
			"#term": atAttr(Terminated), "#rej": atAttr(Rejected),
		},
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":job": str(jobID), ":exp": num(now.Add(l.cfg.TTL).Unix()), ":u": num(h.Until.UnixMilli()),
			":by": str(truncate(h.By, 200)), ":why": str(truncate(h.Reason, events.MaxTextBytes)),
			":at": str(now.UTC().Format(time.RFC3339Nano)), ":of": str(onFailure),
		},
	})
	if isConditionFailed(err) {
		return l.whyNot(ctx, "holding", jobID)
	}
	if err != nil {
		return fmt.Errorf("holding job %s: %w", jobID, err)
	}
	return nil
}

// ReleaseHold ends the job's hold now; the reaper then reaps its fleet. It returns the
// hold released; a job without a live hold is an error that says so.
func (l *Ledger) ReleaseHold(ctx context.Context, jobID string) (Hold, error) {
	rec, err := l.Get(ctx, jobID)
	if err != nil {
		return Hold{}, err
	}
	if !rec.Found() {
		return Hold{}, fmt.Errorf("releasing job %s: %w", jobID, ErrUnknownJob)
	}
	h := rec.Hold()
	now := l.cfg.Now()
	if h.Until.IsZero() || h.Released || !now.Before(h.Until) {
		return h, fmt.Errorf("releasing job %s: it has no hold in force", jobID)
	}
	_, err = l.cfg.API.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: aws.String(l.cfg.Table), Key: Key(jobID),
		UpdateExpression:          aws.String("SET #rel = :now"),
		ConditionExpression:       aws.String("attribute_exists(#u) AND attribute_not_exists(#rel)"),
		ExpressionAttributeNames:  map[string]string{"#rel": attrHoldReleased, "#u": attrHoldUntil},
		ExpressionAttributeValues: map[string]types.AttributeValue{":now": str(now.UTC().Format(time.RFC3339Nano))},
	})
	if isConditionFailed(err) {
		return h, fmt.Errorf("releasing job %s: released meanwhile", jobID)
	}
	if err != nil {
		return h, fmt.Errorf("releasing job %s: %w", jobID, err)
	}
	return h, nil
}

// CancelJob records an operator's cancel of a job, once: a job that finished, ended or
// was cancelled before is left as it is (ErrEnded, ErrCancelled), an unknown one is
// ErrUnknownJob. The stages act on it: the provisioner does not launch a cancelled job,
// the monitor ends a running one with outcome cancelled.
func (l *Ledger) CancelJob(ctx context.Context, jobID string, c Cancel) error {
	now := l.cfg.Now()
	_, err := l.cfg.API.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName: aws.String(l.cfg.Table), Key: Key(jobID),
		UpdateExpression: aws.String("SET #c = :at, #by = :by, #why = :why, #exp = :exp"),
		ConditionExpression: aws.String("attribute_exists(#job) AND attribute_not_exists(#c) AND attribute_not_exists(#fin) " +
			"AND attribute_not_exists(#term) AND attribute_not_exists(#rej)"),
		ExpressionAttributeNames: map[string]string{
			"#c": attrCancelledAt, "#by": attrCancelBy, "#why": attrCancelReason, "#exp": AttrExpires, "#job": AttrJobID,
			"#fin": atAttr(Finished), "#term": atAttr(Terminated), "#rej": atAttr(Rejected),
		},
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":at": str(now.UTC().Format(time.RFC3339Nano)), ":by": str(truncate(c.By, 200)),
			":why": str(truncate(c.Reason, events.MaxTextBytes)), ":exp": num(now.Add(l.cfg.TTL).Unix()),
		},
	})
	if isConditionFailed(err) {
		return l.whyNot(ctx, "cancelling", jobID)
	}
	if err != nil {
		return fmt.Errorf("cancelling job %s: %w", jobID, err)
	}
	return nil
}

// whyNot reads why a hold or cancel's condition failed.
func (l *Ledger) whyNot(ctx context.Context, doing, jobID string) error {
	rec, err := l.Get(ctx, jobID)
	if err != nil {
		return fmt.Errorf("%s job %s: %w", doing, jobID, err)
	}
	if !rec.Found() || rec.Attrs[AttrJobID] == "" {
		return fmt.Errorf("%s job %s: %w (check the job id and --prefix)", doing, jobID, ErrUnknownJob)
	}
	if c, ok := rec.Cancelled(); ok {
		return fmt.Errorf("%s job %s: %w at %s (%s)", doing, jobID, ErrCancelled, c.At.UTC().Format(time.RFC3339), c.Text())
	}
	outcome := rec.Attrs["outcome"]
	switch {
	case rec.DoneAt(Terminated) != "" || rec.DoneAt(Rejected) != "":
		return fmt.Errorf("%s job %s: %w (outcome %s, state %s): nothing changed", doing, jobID, ErrEnded, outcome, rec.State())
	case rec.DoneAt(Finished) != "":
		return fmt.Errorf("%s job %s: it finished with outcome %s at %s: %w, nothing changed", doing, jobID, outcome, rec.DoneAt(Finished), ErrEnded)
	}
	return fmt.Errorf("%s job %s: the ledger refused it (state %s)", doing, jobID, rec.State())
}
