package bus

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	wmsqs "github.com/ThreeDotsLabs/watermill-aws/sqs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/cenkalti/backoff/v5"
)

// stack builds the one middleware stack every service runs, outermost first:
//
//	correlation id → poison (DLQ for permanent errors) → retry with backoff → recoverer
//
// then, for the timer queue, re-deferral of chained timers that are not yet due, and
// finally the handler.
func (r *Router) stack(rt route) message.NoPublishHandlerFunc {
	dlq := DLQName(rt.queue)
	poison, err := middleware.PoisonQueueWithFilter(r.dlq, dlq, IsPermanent)
	if err != nil {
		panic(err) // only for an empty topic name, which DLQName never returns
	}
	h := invoke(rt)
	if rt.timer {
		h = r.deferUntilDue(rt)(h)
	}
	h = recoverer(h)
	h = permanentStopsRetry(h)
	h = r.retry().Middleware(h)
	h = r.logPermanent(rt, dlq)(h)
	h = poison(h)
	h = r.correlate(rt)(h)
	h = r.observe(rt)(h)
	return func(msg *message.Message) error {
		if _, err := h(msg); err != nil {
			// correlate has logged it with the job's ids. Nacking here rather than
			// returning it keeps watermill's router from logging it again without them;
			// the router's Ack after a Nack is a no-op.
			msg.Nack()
		}
		return nil
	}
}

// correlate takes the job and correlation ids from the message attributes (or the
// event's header), generates a correlation id when there is none, and puts both, with a
// logger that logs them, into the message's context.
func (r *Router) correlate(rt route) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			jobID := msg.Metadata.Get(AttrJobID)
			correlationID := msg.Metadata.Get(AttrCorrelationID)
			if jobID == "" || correlationID == "" {
				hj, hc := headerIDs(msg.Payload)
				jobID = cmp.Or(jobID, hj)
				correlationID = cmp.Or(correlationID, hc)
			}
			if correlationID == "" {
				correlationID = watermill.NewUUID()
			}
			// Written back so that a dead-lettered copy carries them too.
			msg.Metadata.Set(AttrCorrelationID, correlationID)
			if jobID != "" {
				msg.Metadata.Set(AttrJobID, jobID)
			}
			d := deliveryFrom(msg.Context())
			attrs := []any{"job_id", jobID, "correlation_id", correlationID, "queue", rt.queue, "message_uuid", msg.UUID, "receive_count", d.receiveCount}
			if et := cmp.Or(msg.Metadata.Get(AttrEventType), rt.eventType); et != "" {
				attrs = append(attrs, "event_type", et)
			}
			logger := r.cfg.Logger.With(attrs...)
			ctx := WithMessageID(WithLogger(WithIDs(msg.Context(), jobID, correlationID), logger), msg.UUID)
			msg.SetContext(ctx)
			if d.logger != nil {
				d.logger.Store(logger) // the heartbeat's lines carry the ids too
			}

			logger.Debug("handling message")
			out, err := h(msg)
			switch {
			case err == nil:
				logger.Debug("message handled")
			case d.receiveCount >= MaxReceiveCount && !IsAbandoned(err):
				logger.Error("message not handled; SQS will move it to the DLQ", "error", err)
				if hookErr := r.deadLetter(msg, rt, DLQName(rt.queue), err); hookErr != nil {
					logger.Error("telling the dead letter's job", "error", hookErr)
				}
			default:
				logger.Warn("message not handled; SQS will redeliver it", "error", err)
			}
			return out, err
		}
	}
}

// observe reports each delivery to the Observer: started, then done with how long it
// took and its outcome (a message the poison middleware dead-lettered carries the reason
// it set).
func (r *Router) observe(rt route) message.HandlerMiddleware {
	o := r.cfg.Observer
	eventType := cmp.Or(rt.eventType, TimerEventType)
	return func(h message.HandlerFunc) message.HandlerFunc {
		if o == nil {
			return h
		}
		return func(msg *message.Message) ([]*message.Message, error) {
			start := time.Now()
			o.HandlerStarted(eventType)
			out, err := h(msg)
			outcome := OutcomeHandled
			switch {
			case err != nil:
				outcome = OutcomeFailed
			case msg.Metadata.Get(middleware.ReasonForPoisonedKey) != "":
				outcome = OutcomeDeadLettered
			}
			o.HandlerDone(eventType, time.Since(start), outcome)
			return out, err
		}
	}
}

// logPermanent logs the permanent errors the poison middleware is about to dead-letter.
//
// With Config.OnDeadLetter set it tells it first; when that fails, the message is not
// dead-lettered but retried (the error is returned as transient), so that the job's
// rejection is not lost.
func (r *Router) logPermanent(rt route, dlq string) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			if err != nil && IsPermanent(err) {
				if hookErr := r.deadLetter(msg, rt, dlq, err); hookErr != nil {
					Logger(msg.Context()).Error("telling the dead letter's job; retrying the message", "dlq", dlq, "error", hookErr, "reason", err)
					return out, fmt.Errorf("telling the dead letter's job: %w", hookErr)
				}
				Logger(msg.Context()).Warn("permanent error: sending the message to its DLQ", "dlq", dlq, "error", err)
			}
			return out, err
		}
	}
}

// DeadLetter is a message about to reach its DLQ, as Config.OnDeadLetter sees it.
type DeadLetter struct {
	MessageID            string // the message's id: the same on every delivery
	JobID, CorrelationID string
	EventType            string
	Queue, DLQ           string
	Reason               string
	// Exhausted says SQS moves it after its last delivery failed with a transient error;
	// otherwise a permanent error sends it at once.
	Exhausted bool
	// PlanRevision is the event's plan_revision when it has one (FleetPlanned,
	// FleetLaunched, FleetBootstrapped, InstanceLost), else 0: a replacement fleet's
	// message (revision > 1) must not end a job whose other instances still run.
	PlanRevision int
}

// deadLetter calls Config.OnDeadLetter, if set, for a message with a job id.
func (r *Router) deadLetter(msg *message.Message, rt route, dlq string, reason error) error {
	if r.cfg.OnDeadLetter == nil {
		return nil
	}
	ctx := msg.Context()
	d := DeadLetter{
		MessageID: msg.UUID,
		JobID:     JobID(ctx), CorrelationID: CorrelationID(ctx), EventType: cmp.Or(msg.Metadata.Get(AttrEventType), rt.eventType),
		Queue: rt.queue, DLQ: dlq, Reason: reason.Error(), Exhausted: !IsPermanent(reason),
		PlanRevision: planRevision(msg.Payload),
	}
	if d.JobID == "" && !d.Exhausted {
		return nil // nothing to answer, and the DLQ message carries its reason
	}
	return r.cfg.OnDeadLetter(ctx, d)
}

// retry is watermill's retry middleware with the configured policy. Permanent errors
// stop it through permanentStopsRetry rather than its ShouldRetry hook, which advances
// the backoff once more per attempt and would double the configured intervals.
func (r *Router) retry() middleware.Retry {
	p := r.cfg.Retry
	return middleware.Retry{
		MaxRetries:          p.MaxRetries,
		InitialInterval:     p.InitialInterval,
		MaxInterval:         p.MaxInterval,
		Multiplier:          p.Multiplier,
		ResetContextOnRetry: true,
	}
}

// permanentStopsRetry marks permanent errors for the backoff library, so the retry
// middleware returns them after the first attempt.
func permanentStopsRetry(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		out, err := h(msg)
		if err != nil && (IsPermanent(err) || IsAbandoned(err)) {
			return out, backoff.Permanent(err)
		}
		if err != nil {
			Logger(msg.Context()).Info("handler failed; retrying if attempts remain", "error", err)
		}
		return out, err
	}
}

// recoverer turns a panic into a transient error (so it is retried) and logs it with the
// stack, using watermill's recoverer.
func recoverer(h message.HandlerFunc) message.HandlerFunc {
	rec := middleware.Recoverer(h)
	return func(msg *message.Message) ([]*message.Message, error) {
		out, err := rec(msg)
		var p middleware.RecoveredPanicError
		if errors.As(err, &p) {
			Logger(msg.Context()).Error("handler panicked", "panic", fmt.Sprint(p.V), "stack", p.Stacktrace)
			return out, fmt.Errorf("handler panicked: %v", p.V)
		}
		return out, err
	}
}

// deferUntilDue re-sends a chained timer that is not due yet (see Publisher.After)
// instead of handing it to the handler.
func (r *Router) deferUntilDue(rt route) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			raw := msg.Metadata.Get(AttrDue)
			if raw == "" {
				return h(msg)
			}
			due, err := time.Parse(time.RFC3339Nano, raw)
			if err != nil {
				return nil, Permanent(fmt.Errorf("timer on %s: attribute %s %q: %w", rt.queue, AttrDue, raw, err))
			}
			if !time.Now().Before(due) {
				return h(msg)
			}
			if err := r.timers.send(msg.Context(), rt.queue, due, msg.Payload, maps.Clone(msg.Metadata)); err != nil {
				return nil, fmt.Errorf("re-deferring timer due %s: %w", raw, err)
			}
			Logger(msg.Context()).Debug("timer not due yet: deferred", "due", raw)
			return nil, nil
		}
	}
}

// invoke calls the registered handler with the message as a *Message.
func invoke(rt route) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx := msg.Context()
		attrs := maps.Clone(map[string]string(msg.Metadata))
		if attrs == nil {
			attrs = map[string]string{}
		}
		eventType := attrs[AttrEventType]
		if rt.eventType != "" {
			if eventType != "" && eventType != rt.eventType {
				return nil, Permanent(fmt.Errorf("a %s message on %s, the queue of %s", eventType, rt.queue, rt.eventType))
			}
			eventType = rt.eventType
		}
		m := &Message{
			UUID:          msg.UUID,
			EventType:     eventType,
			JobID:         JobID(ctx),
			CorrelationID: CorrelationID(ctx),
			Payload:       bytes.Clone(msg.Payload),
			Attributes:    attrs,
			Queue:         rt.queue,
			ReceiveCount:  deliveryFrom(ctx).receiveCount,
		}
		return nil, rt.h(ctx, m)
	}
}

// headerIDs reads the job and correlation ids from an event body's header, if it has one.
func headerIDs(payload []byte) (jobID, correlationID string) {
	var h struct {
		JobID         string `json:"job_id"`
		CorrelationID string `json:"correlation_id"`
	}
	if json.Unmarshal(payload, &h) != nil {
		return "", ""
	}
	return h.JobID, h.CorrelationID
}

// planRevision reads an event body's plan_revision, 0 when it has none or is no event.
func planRevision(payload []byte) int {
	var e struct {
		PlanRevision int `json:"plan_revision"`
	}
	if json.Unmarshal(payload, &e) != nil {
		return 0
	}
	return e.PlanRevision
}

// maxReasonBytes bounds the sortie_error attribute of a dead-lettered message.
const maxReasonBytes = 1024

// dlqMarshaler writes a dead-lettered message as watermill-aws writes any message (body
// unchanged, metadata as attributes, the watermill uuid), replacing the poison
// middleware's metadata with sortie_error and sortie_source_queue. Empty attributes,
// which SQS rejects, are dropped.
type dlqMarshaler struct{}

var _ wmsqs.Marshaler = dlqMarshaler{}

func (dlqMarshaler) Marshal(msg *message.Message) (*sqstypes.Message, error) {
	out, err := wmsqs.DefaultMarshalerUnmarshaler{}.Marshal(msg)
	if err != nil {
		return nil, err
	}
	attrs := out.MessageAttributes
	for _, k := range []string{middleware.ReasonForPoisonedKey, middleware.PoisonedTopicKey, middleware.PoisonedHandlerKey, middleware.PoisonedSubscriberKey} {
		delete(attrs, k)
	}
	for k, v := range attrs {
		if v.StringValue != nil && *v.StringValue == "" {
			delete(attrs, k)
		}
	}
	attrs[AttrError] = stringAttr(truncate(cmp.Or(msg.Metadata.Get(middleware.ReasonForPoisonedKey), "unknown"), maxReasonBytes))
	if src := msg.Metadata.Get(middleware.PoisonedTopicKey); src != "" {
		attrs[AttrSourceQueue] = stringAttr(src)
	}
	return out, nil
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const ellipsis = "…"
	cut := n - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}
