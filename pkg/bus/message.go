package bus

import (
	"context"
	"log/slog"
	"sync/atomic"
)

// Message attributes (SNS/SQS message attributes, watermill metadata) that Sortie sets.
const (
	AttrEventType     = "event_type"          // the event type, e.g. "JobSubmitted"
	AttrJobID         = "job_id"              // the job the message belongs to
	AttrCorrelationID = "correlation_id"      // follows a job through every service
	AttrError         = "sortie_error"        // on DLQ messages: why the message was dead-lettered
	AttrSourceQueue   = "sortie_source_queue" // on DLQ messages: the queue it was read from
	AttrDue           = "sortie_due"          // on chained timers: when the timer is due (RFC 3339)
)

// Message is what a handler receives: one SQS message. The router acknowledges it
// according to what the handler returns (see HandlerFunc).
type Message struct {
	// UUID identifies the message across redeliveries (watermill's uuid attribute, or the
	// SQS message id when the sender set none).
	UUID string
	// EventType is the event's type ("JobSubmitted"); empty for timers sent without one.
	EventType string
	// JobID and CorrelationID come from the message attributes, or from the event's
	// header when the attributes lack them. CorrelationID is never empty: one is
	// generated for a message that carries none.
	JobID         string
	CorrelationID string
	// Payload is the message body unchanged: the event's JSON.
	Payload []byte
	// Attributes are the message attributes as strings (a copy: changing it changes nothing).
	Attributes map[string]string
	// Queue is the SQS queue the message was read from.
	Queue string
	// ReceiveCount is SQS's ApproximateReceiveCount: 1 on the first delivery, 0 if unknown.
	ReceiveCount int
}

// HandlerFunc handles one message. Returning nil acknowledges (deletes) the message.
// An error marked with Permanent, or wrapping events.ErrInvalid, sends it to the DLQ at
// once; any other error is retried with backoff, and when retries run out the message is
// left for SQS to redeliver (and, after MaxReceiveCount deliveries, to dead-letter).
//
// ctx carries the job and correlation ids and a logger with both (Logger(ctx)); it is
// cancelled only when a shutdown outlasts the router's CloseTimeout. While the handler
// runs, retries included, the router keeps the message hidden from other replicas by
// extending its visibility timeout, for up to Config.MaxHandle (15 min) after it was
// received; a handler still running then is warned about in the log and SQS delivers the
// message again. Handlers are idempotent anyway, since SQS delivers at least once.
type HandlerFunc func(ctx context.Context, m *Message) error

type ctxKey int

const (
	loggerKey ctxKey = iota
	idsKey
	deliveryKey
	messageIDKey
)

// WithMessageID returns ctx carrying the id of the message being handled: the same on
// every delivery of one published message, another for each publish.
func WithMessageID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, messageIDKey, id)
}

// MessageID returns the id of the message ctx's handler handles ("" outside one).
func MessageID(ctx context.Context) string {
	v, _ := ctx.Value(messageIDKey).(string)
	return v
}

type ids struct{ jobID, correlationID string }

// WithIDs returns ctx carrying a job and correlation id, as the router sets them for every
// message it handles. Publisher.After copies them into the timers it sends.
func WithIDs(ctx context.Context, jobID, correlationID string) context.Context {
	return context.WithValue(ctx, idsKey, ids{jobID, correlationID})
}

// JobID returns the job id carried by ctx ("" if none).
func JobID(ctx context.Context) string {
	v, _ := ctx.Value(idsKey).(ids)
	return v.jobID
}

// CorrelationID returns the correlation id carried by ctx ("" if none).
func CorrelationID(ctx context.Context) string {
	v, _ := ctx.Value(idsKey).(ids)
	return v.correlationID
}

// WithLogger returns ctx carrying l, which Logger returns.
func WithLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey, l)
}

// Logger returns the logger carried by ctx: inside a handler it logs job_id,
// correlation_id, event_type, queue and message_uuid with every line. Without one it
// returns slog.Default().
func Logger(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey).(*slog.Logger); ok && l != nil {
		return l
	}
	return slog.Default()
}

// delivery is what the subscriber knows about a received message.
type delivery struct {
	queue        string
	receiveCount int
	// logger is what the subscriber logs the message's heartbeat and deletion with; the
	// router stores the message's own logger (with its ids) there.
	logger *atomic.Pointer[slog.Logger]
}

func deliveryFrom(ctx context.Context) delivery {
	d, _ := ctx.Value(deliveryKey).(delivery)
	return d
}
