package ledger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
)

// Rejected is the stage of a job that a stage refused: its rejection was published.
const Rejected Stage = "rejected"

// Publisher is the bus call a Rejecter makes.
type Publisher interface {
	Publish(ctx context.Context, e events.Event) error
}

// Rejecter answers a job that a stage refuses with its terminal event, once: a
// FleetTerminated whose outcome is rejected, published by the winner of the job's rejected
// stage, unless the job has ended already.
type Rejecter struct {
	Ledger    *Ledger
	Publisher Publisher
	Service   string // the stage that rejects: FleetTerminated.RejectedBy
	Logger    *slog.Logger
}

// Reject publishes the job's rejection with reason, once per job. A job whose fleet was
// terminated, or that was rejected before, gets nothing more; nor does a job id that
// cannot be answered (it is not a valid id).
func (r Rejecter) Reject(ctx context.Context, jobID, correlationID, reason string) error {
	return r.end(ctx, jobID, correlationID, events.OutcomeRejected, reason)
}

// AnswerCancel ends a job an operator cancelled before its launch with a FleetTerminated
// whose outcome is cancelled, once per job (the rejected stage records it: the job never
// ran).
func (r Rejecter) AnswerCancel(ctx context.Context, jobID, correlationID string, c Cancel) error {
	return r.end(ctx, jobID, correlationID, events.OutcomeCancelled, c.Text())
}

func (r Rejecter) end(ctx context.Context, jobID, correlationID, outcome, reason string) error {
	log := r.Logger
	if log == nil {
		log = slog.Default()
	}
	ev := events.FleetTerminated{
		Header:  events.NewHeader(jobID, correlationID, r.Ledger.cfg.Now()),
		FleetID: jobID,
		Outcome: outcome,
		Reason:  truncate(reason, events.MaxTextBytes),
	}
	if outcome == events.OutcomeRejected {
		ev.RejectedBy = r.Service
	}
	if ev.CorrelationID == "" {
		ev.CorrelationID = jobID
	}
	if err := ev.Validate(); err != nil {
		log.Warn("job cannot be answered with its rejection", "job_id", jobID, "error", err.Error())
		return nil
	}
	rec, err := r.Ledger.Get(ctx, jobID)
	if err != nil {
		return fmt.Errorf("rejecting job %s: %w", jobID, err)
	}
	if at := rec.DoneAt(Terminated); at != "" {
		log.Info("job rejected after its fleet was terminated: it has its answer", "job_id", jobID, "terminated_at", at, "reason", reason)
		return nil
	}
	claim, err := r.Ledger.Claim(ctx, jobID, Rejected)
	if errors.Is(err, ErrTaken) {
		log.Debug("job rejected before: not answering again", "job_id", jobID, "reason", err.Error())
		return nil
	}
	if err != nil {
		return fmt.Errorf("rejecting job %s: %w", jobID, err)
	}
	defer claim.Release(ctx)
	if err := claim.Checkpoint(); err != nil {
		return err
	}
	if err := r.Publisher.Publish(ctx, ev); err != nil {
		return fmt.Errorf("rejecting job %s: %w", jobID, err)
	}
	if err := claim.Done(ctx, Fields{"outcome": outcome, "reason": ev.Reason, "rejected_by": r.Service}); err != nil {
		log.Error("recording the rejection in the ledger", "job_id", jobID, "error", err.Error())
	}
	log.Warn("job ended before its launch", "job_id", jobID, "outcome", outcome, "reason", ev.Reason)
	// A rejected job no longer holds capacity; instances it may have left (with a lease)
	// are the sweep's.
	if err := r.Ledger.Release(ctx, jobID); err != nil {
		log.Error("releasing the rejected job's capacity", "job_id", jobID, "error", err.Error())
	}
	return nil
}

// OnDeadLetter is a bus.Config.OnDeadLetter: a job whose message reaches a DLQ is rejected
// with the reason. TaskReported and InstanceLost are the exceptions: one bad task report
// does not end a job, nor does a lost instance's notice that could not be handled (the
// job's other instances still run and may finish it); nor does a replacement fleet's
// message (plan revision > 1), whose revision is recorded failed instead.
//
// A message SQS itself moves to the DLQ (its last delivery failed) carries no reason
// attribute, so its last error is recorded in the ledger by message id first, for `sortie
// dlq list`.
func (r Rejecter) OnDeadLetter(ctx context.Context, d bus.DeadLetter) error {
	reason := d.Reason
	if d.Exhausted {
		reason = "retries exhausted: " + reason
		if d.MessageID != "" {
			if err := r.Ledger.RecordDeadLetter(ctx, d.MessageID, d.DLQ, reason); err != nil {
				return err
			}
		}
	}
	if d.EventType == bus.TaskReported || d.EventType == bus.InstanceLost || d.JobID == "" {
		return nil
	}
	if d.PlanRevision > 1 {
		// A replacement fleet's message: the job goes on with the instances it has; the
		// revision is recorded failed so the monitor does not wait for it.
		return r.Ledger.SetRevisionState(ctx, d.JobID, d.PlanRevision, RevFailed+": "+r.Service+": dead-lettered: "+reason)
	}
	return r.Reject(ctx, d.JobID, d.CorrelationID, r.Service+": "+reason)
}

// truncate cuts s to at most n bytes on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// RejectReuse answers a JobSubmitted whose job id an earlier, different submission took:
// a FleetTerminated rejected with the earlier job's outcome (or its state while it runs),
// once per distinct reused submission (its digest).
func (r Rejecter) RejectReuse(ctx context.Context, job events.JobSubmitted, digest string, earlier Record) error {
	stage := Stage("reuse_" + digest[:min(16, len(digest))])
	claim, err := r.Ledger.Claim(ctx, job.JobID, stage)
	if errors.Is(err, ErrTaken) {
		return nil // answered before
	}
	if err != nil {
		return fmt.Errorf("answering the reuse of job id %s: %w", job.JobID, err)
	}
	defer claim.Release(ctx)
	ev := events.FleetTerminated{
		Header:     events.NewHeader(job.JobID, job.CorrelationID, r.Ledger.cfg.Now()),
		FleetID:    job.JobID,
		Outcome:    events.OutcomeRejected,
		Reason:     truncate(ReuseReason(job.JobID, earlier), events.MaxTextBytes),
		RejectedBy: r.Service,
	}
	if err := claim.Checkpoint(); err != nil {
		return err
	}
	if err := r.Publisher.Publish(ctx, ev); err != nil {
		return fmt.Errorf("answering the reuse of job id %s: %w", job.JobID, err)
	}
	if err := claim.Done(ctx, nil); err != nil && r.Logger != nil {
		r.Logger.Error("recording the reuse answer in the ledger", "job_id", job.JobID, "error", err.Error())
	}
	return nil
}

// ReuseReason says which earlier job holds a job id and how it ended (or where it is).
func ReuseReason(jobID string, earlier Record) string {
	when := earlier.Attrs[AttrSubmittedAt]
	if when == "" {
		when = "earlier"
	}
	outcome := earlier.Attrs["outcome"]
	ended := earlier.DoneAt(Terminated) != "" || earlier.DoneAt(Rejected) != ""
	switch {
	case ended && earlier.Attrs["reason"] != "":
		return fmt.Sprintf("job id %s reused: the job submitted %s with that id ended %s: %s", jobID, when, outcome, earlier.Attrs["reason"])
	case ended:
		return fmt.Sprintf("job id %s reused: the job submitted %s with that id ended %s", jobID, when, outcome)
	default:
		return fmt.Sprintf("job id %s reused: the job submitted %s with that id is still running (state %s)", jobID, when, earlier.State())
	}
}

func deadLetterKey(messageID string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{AttrKey: str("dlq#" + messageID)}
}

// RecordDeadLetter keeps the reason of a message SQS moves to a DLQ after its last
// delivery failed, by the message's id (the _watermill_message_uuid attribute).
func (l *Ledger) RecordDeadLetter(ctx context.Context, messageID, dlq, reason string) error {
	item := deadLetterKey(messageID)
	item["reason"] = str(truncate(reason, events.MaxTextBytes))
	item["dlq"] = str(dlq)
	item["at"] = str(l.cfg.Now().UTC().Format(time.RFC3339Nano))
	item[AttrExpires] = num(l.cfg.Now().Add(l.cfg.TTL).Unix())
	_, err := l.cfg.API.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(l.cfg.Table), Item: item})
	if err != nil {
		return fmt.Errorf("recording the dead letter %s: %w", messageID, err)
	}
	return nil
}

// DeadLetterReason returns the reason recorded for a dead-lettered message ("" if none).
func (l *Ledger) DeadLetterReason(ctx context.Context, messageID string) (string, error) {
	out, err := l.cfg.API.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(l.cfg.Table), Key: deadLetterKey(messageID)})
	if err != nil {
		return "", fmt.Errorf("reading the dead letter %s: %w", messageID, err)
	}
	return flatten(out.Item)["reason"], nil
}
