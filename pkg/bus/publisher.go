package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmsns "github.com/ThreeDotsLabs/watermill-aws/sns"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/events"
)

// Event is what the publisher needs to know of an event to route it; every pkg/events
// type satisfies it.
type Event interface {
	EventType() string
	IDs() (jobID, correlationID string)
}

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	Topology Topology
	AWS      aws.Config
	Logger   *slog.Logger // nil: slog.Default()
}

// Validate reports every problem with the configuration at once.
func (c PublisherConfig) Validate() error {
	return errors.Join(c.Topology.Validate(), validateAWS(c.AWS))
}

func validateAWS(c aws.Config) error {
	var errs []error
	if c.Credentials == nil {
		errs = append(errs, errors.New("aws config: no credentials"))
	}
	if c.Region == "" {
		errs = append(errs, errors.New("aws config: no region (set AWS_REGION)"))
	}
	return errors.Join(errs...)
}

// timerAPI is the SQS calls timers make.
type timerAPI interface {
	queueURLAPI
	SendMessage(ctx context.Context, params *sqs.SendMessageInput, optFns ...func(*sqs.Options)) (*sqs.SendMessageOutput, error)
}

// Publisher publishes events to their SNS topics and sends timers to the services' own
// timer queues. It never creates a topic or queue. It is safe for concurrent use.
type Publisher struct {
	topo   Topology
	sns    *wmsns.Publisher
	timers *timerSender
}

// NewPublisher returns a publisher for the stack cfg.Topology names.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("publisher config: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	snsPub, err := wmsns.NewPublisher(wmsns.PublisherConfig{
		AWSConfig:                   cfg.AWS,
		DoNotCreateTopicIfNotExists: true,
		TopicResolver:               newTopicResolver(sns.NewFromConfig(cfg.AWS)),
	}, watermillLogger(logger))
	if err != nil {
		return nil, fmt.Errorf("creating sns publisher: %w", err)
	}
	client := sqs.NewFromConfig(cfg.AWS)
	return &Publisher{
		topo:   cfg.Topology,
		sns:    snsPub,
		timers: newTimerSender(client, newQueueResolver(client)),
	}, nil
}

// Publish validates and encodes e (events.Encode) and publishes it to its type's topic.
// An event that does not validate is refused with an error wrapping events.ErrInvalid.
func (p *Publisher) Publish(ctx context.Context, e events.Event) error {
	body, err := events.Encode(e)
	if err != nil {
		return fmt.Errorf("publishing: %w", err)
	}
	return p.PublishBody(ctx, e, body)
}

// PublishBody publishes an already encoded body to the topic of e's type, with the
// message attributes event_type, job_id and correlation_id taken from e (the correlation
// id from ctx when e has none). The body is sent unchanged: subscriptions deliver it raw,
// so it is the SQS message body.
func (p *Publisher) PublishBody(ctx context.Context, e Event, body []byte) error {
	eventType := e.EventType()
	if !slices.Contains(EventTypes, eventType) {
		return fmt.Errorf("publishing: unknown event type %q", eventType)
	}
	jobID, correlationID := e.IDs()
	if correlationID == "" {
		correlationID = CorrelationID(ctx)
	}
	msg := message.NewMessage(watermill.NewUUID(), body)
	setIfNotEmpty(msg.Metadata, AttrEventType, eventType)
	setIfNotEmpty(msg.Metadata, AttrJobID, jobID)
	setIfNotEmpty(msg.Metadata, AttrCorrelationID, correlationID)
	// watermill-aws publishes with its own background context: honour ctx at least up to
	// the call.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("publishing %s for job %s: %w", eventType, jobID, err)
	}
	if err := p.sns.Publish(p.topo.TopicName(eventType), msg); err != nil {
		return fmt.Errorf("publishing %s for job %s: %w", eventType, jobID, err)
	}
	return nil
}

// After sends body to service's own timer queue, to be delivered to its timer handler
// (Router.HandleTimers) after delay, with attrs as message attributes (plus the job and
// correlation ids from ctx when attrs lacks them). Delays beyond SQS's 15-minute maximum
// are chained transparently: the message is re-sent until it is due.
func (p *Publisher) After(ctx context.Context, service string, delay time.Duration, body []byte, attrs map[string]string) error {
	if !slices.Contains(TimerServices, service) {
		return fmt.Errorf("sending timer: service %q has no timer queue (want one of %v)", service, TimerServices)
	}
	if len(body) == 0 {
		return errors.New("sending timer: empty body (SQS needs at least one character)")
	}
	if delay < 0 {
		delay = 0
	}
	return p.timers.send(ctx, p.topo.TimerQueueName(service), time.Now().Add(delay), body, attrs)
}

// Close releases the publisher.
func (p *Publisher) Close() error { return p.sns.Close() }

func setIfNotEmpty(m message.Metadata, k, v string) {
	if v != "" {
		m.Set(k, v)
	}
}

// maxSQSDelay is SQS's limit on DelaySeconds.
const maxSQSDelay = 900 * time.Second

// timerSender sends delayed messages, chaining delays longer than maxDelay.
type timerSender struct {
	api      timerAPI
	queues   *queueResolver
	maxDelay time.Duration // maxSQSDelay; tests shorten it
}

func newTimerSender(api timerAPI, queues *queueResolver) *timerSender {
	return &timerSender{api: api, queues: queues, maxDelay: maxSQSDelay}
}

// planTimer returns the DelaySeconds of the next hop of a timer due at due, and whether
// the timer must be chained (sent again on arrival, because it is due later than one hop
// can reach). Delays are rounded up to whole seconds so a timer never fires early.
func planTimer(now, due time.Time, maxDelay time.Duration) (delaySeconds int32, chained bool) {
	remaining := due.Sub(now)
	if remaining <= 0 {
		return 0, false
	}
	secs := (remaining + time.Second - 1) / time.Second
	maxSecs := maxDelay / time.Second
	if secs > maxSecs {
		return int32(maxSecs), true
	}
	return int32(secs), false
}

// send sends one hop of a timer due at due to queue.
func (t *timerSender) send(ctx context.Context, queue string, due time.Time, body []byte, attrs map[string]string) error {
	url, err := t.queues.url(ctx, queue)
	if err != nil {
		return fmt.Errorf("sending timer: %w", err)
	}
	delay, chained := planTimer(time.Now(), due, t.maxDelay)
	a := make(map[string]sqstypes.MessageAttributeValue, len(attrs)+3)
	for k, v := range attrs {
		if v != "" && k != AttrDue {
			a[k] = stringAttr(v)
		}
	}
	if _, ok := a[AttrJobID]; !ok && JobID(ctx) != "" {
		a[AttrJobID] = stringAttr(JobID(ctx))
	}
	if _, ok := a[AttrCorrelationID]; !ok && CorrelationID(ctx) != "" {
		a[AttrCorrelationID] = stringAttr(CorrelationID(ctx))
	}
	// A timer that was chained once keeps its due time on every later hop, so the router
	// checks it again on arrival.
	if chained || attrs[AttrDue] != "" {
		a[AttrDue] = stringAttr(due.UTC().Format(time.RFC3339Nano))
	}
	_, err = t.api.SendMessage(ctx, &sqs.SendMessageInput{
		QueueUrl:          aws.String(url),
		MessageBody:       aws.String(string(body)),
		DelaySeconds:      delay,
		MessageAttributes: a,
	})
	if err != nil {
		return fmt.Errorf("sending timer to %s: %w", queue, err)
	}
	return nil
}

func stringAttr(v string) sqstypes.MessageAttributeValue {
	return sqstypes.MessageAttributeValue{DataType: aws.String("String"), StringValue: aws.String(v)}
}
