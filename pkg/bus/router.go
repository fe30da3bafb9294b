package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmsqs "github.com/ThreeDotsLabs/watermill-aws/sqs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
)

// RetryPolicy is the in-process retry of a handler's transient errors: up to MaxRetries
// more attempts, waiting InitialInterval, then multiplying the wait by Multiplier up to
// MaxInterval. The message stays hidden from other replicas while it is retried, but
// only for up to Config.MaxHandle in all.
type RetryPolicy struct {
	MaxRetries      int
	InitialInterval time.Duration
	Multiplier      float64
	MaxInterval     time.Duration
}

// DefaultRetry is used when Config.Retry is the zero value: 4 attempts over about 1.5 s.
var DefaultRetry = RetryPolicy{MaxRetries: 3, InitialInterval: 200 * time.Millisecond, Multiplier: 2, MaxInterval: 2 * time.Second}

// Defaults of Config's zero fields.
const (
	DefaultConcurrency  = 4
	DefaultCloseTimeout = 30 * time.Second
	DefaultWaitTime     = 20 * time.Second
	DefaultMaxHandle    = 15 * time.Minute
)

var serviceRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,30}$`)

// Config configures a Router. Zero fields take the defaults above.
type Config struct {
	Topology Topology
	// Service is the consuming service (Planner, Monitor, ...): it selects the queues.
	Service string
	// AWS is the service's config (awsx.Load in main, awsx.ForEndpoint in tests).
	AWS    aws.Config
	Logger *slog.Logger // nil: slog.Default()
	// Concurrency is the number of messages handled at once per queue.
	Concurrency int
	// CloseTimeout bounds the shutdown: how long in-flight handlers may run on after the
	// context passed to Run is cancelled.
	CloseTimeout time.Duration
	Retry        RetryPolicy
	// WaitTime is the SQS long-poll duration, 1-20 s (whole seconds).
	WaitTime time.Duration
	// MaxHandle bounds how long a message is kept hidden while it is handled, counted
	// from its receipt, 1s-12h: every VisibilityTimeout/3 (the queue's, read at start-up)
	// the router sets the message's visibility timeout to the queue's again, until the
	// handler returns or MaxHandle has passed (the last extension is cut to end about
	// then; a MaxHandle shorter than the queue's VisibilityTimeout does not shorten that).
	// After that it logs a warning and SQS delivers the message again, so a stuck handler
	// cannot hold it forever.
	MaxHandle time.Duration
	// Observer, when set, sees the router's queue checks and every delivery (metrics,
	// readiness).
	Observer Observer
	// AwaitQueues makes Run wait for missing or unreachable queues, checking again every
	// few seconds and reporting why to the Observer, instead of failing at once. A
	// service run by service.Serve waits (its /readyz says what is missing); tests and
	// tools fail fast.
	AwaitQueues bool
	// OnDeadLetter, when set, is told of every message of a known job that is about to
	// reach its DLQ: at once for a permanent error (an error it returns keeps the message
	// from the DLQ and has it retried), or after the last delivery SQS allows failed. The
	// stages answer the job with its rejection there (ledger.Rejecter).
	OnDeadLetter func(ctx context.Context, d DeadLetter) error
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = DefaultCloseTimeout
	}
	if c.Retry == (RetryPolicy{}) {
		c.Retry = DefaultRetry
	}
	if c.WaitTime == 0 {
		c.WaitTime = DefaultWaitTime
	}
	if c.MaxHandle == 0 {
		c.MaxHandle = DefaultMaxHandle
	}
	return c
}

// Validate reports every problem with the configuration at once, joined with errors.Join.
// Zero fields that have defaults are valid.
func (c Config) Validate() error {
	c = c.withDefaults()
	errs := []error{c.Topology.Validate(), validateAWS(c.AWS)}
	if !serviceRE.MatchString(c.Service) {
		errs = append(errs, fmt.Errorf("service %q: want a name like %q", c.Service, Planner))
	}
	if c.Concurrency < 1 || c.Concurrency > 100 {
		errs = append(errs, fmt.Errorf("concurrency %d: want 1-100", c.Concurrency))
	}
	if c.CloseTimeout < 0 {
		errs = append(errs, fmt.Errorf("close timeout %s: want > 0", c.CloseTimeout))
	}
	if c.WaitTime < time.Second || c.WaitTime > 20*time.Second || c.WaitTime%time.Second != 0 {
		errs = append(errs, fmt.Errorf("wait time %s: want whole seconds, 1s-20s", c.WaitTime))
	}
	if c.MaxHandle < time.Second || c.MaxHandle > maxVisibility {
		errs = append(errs, fmt.Errorf("max handle %s: want 1s-12h (SQS hides a message at most 12h)", c.MaxHandle))
	}
	r := c.Retry
	if r.MaxRetries < 0 {
		errs = append(errs, fmt.Errorf("retry: max retries %d: want >= 0", r.MaxRetries))
	}
	if r.MaxRetries > 0 {
		if r.InitialInterval <= 0 {
			errs = append(errs, fmt.Errorf("retry: initial interval %s: want > 0", r.InitialInterval))
		}
		if r.Multiplier < 1 {
			errs = append(errs, fmt.Errorf("retry: multiplier %g: want >= 1", r.Multiplier))
		}
		if r.MaxInterval < r.InitialInterval {
			errs = append(errs, fmt.Errorf("retry: max interval %s: want >= initial interval %s", r.MaxInterval, r.InitialInterval))
		}
	}
	return errors.Join(errs...)
}

// routerAPI is every SQS call the router and its subscriber make.
type routerAPI interface {
	receiveAPI
	timerAPI
	queueAttributesAPI
}

// route is one registered handler: a queue and what handles it.
type route struct {
	queue     string
	eventType string // "" for the timer queue
	timer     bool
	h         HandlerFunc
}

// Router consumes a service's queues: it runs every message through the shared
// middleware stack (correlation id → DLQ for permanent errors → retry with backoff →
// panic recovery) to the handler registered for the queue.
type Router struct {
	cfg    Config
	api    routerAPI
	queues *queueResolver
	timers *timerSender
	wmLog  watermill.LoggerAdapter
	dlq    message.Publisher

	routes  []route
	errs    []error
	onReady []func(ctx context.Context) error

	heartbeats atomic.Int64 // messages being kept hidden right now
}

// NewRouter returns a router for cfg.Service. Register handlers with Handle and
// HandleTimers, then call Run.
func NewRouter(cfg Config) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("router config: %w", err)
	}
	cfg = cfg.withDefaults()
	client := sqs.NewFromConfig(cfg.AWS)
	queues := newQueueResolver(client)
	wmLog := watermillLogger(cfg.Logger)
	dlq, err := wmsqs.NewPublisher(wmsqs.PublisherConfig{
		AWSConfig:                   cfg.AWS,
		DoNotCreateQueueIfNotExists: true,
		QueueUrlResolver:            queues,
		Marshaler:                   dlqMarshaler{},
	}, wmLog)
	if err != nil {
		return nil, fmt.Errorf("creating dlq publisher: %w", err)
	}
	return &Router{
		cfg:    cfg,
		api:    client,
		queues: queues,
		timers: newTimerSender(client, queues),
		wmLog:  wmLog,
		dlq:    dlq,
	}, nil
}

// Handle registers h for the events of eventType, read from the service's queue for
// that type. A type the service does not consume, or one registered twice, makes Run fail.
func (r *Router) Handle(eventType string, h HandlerFunc) {
	switch {
	case h == nil:
		r.errs = append(r.errs, fmt.Errorf("handler for %s is nil", eventType))
	case !slices.Contains(Consumers[eventType], r.cfg.Service):
		r.errs = append(r.errs, fmt.Errorf("service %s does not consume %q (see bus.Consumers)", r.cfg.Service, eventType))
	default:
		r.add(route{queue: r.cfg.Topology.QueueName(r.cfg.Service, eventType), eventType: eventType, h: h})
	}
}

// HandleQueue registers h for a queue that is not one of the stack's topic subscriptions:
// one another AWS service writes to (EventBridge's EC2 notices, see
// Topology.EC2EventsQueueName). Its bodies are not Sortie events; its DLQ is DLQName(queue).
func (r *Router) HandleQueue(queue string, h HandlerFunc) {
	switch {
	case h == nil:
		r.errs = append(r.errs, fmt.Errorf("handler for queue %s is nil", queue))
	case queue == "":
		r.errs = append(r.errs, errors.New("HandleQueue: no queue named"))
	default:
		r.add(route{queue: queue, h: h})
	}
}

// HandleTimers registers h for the service's own timer queue (see Publisher.After).
// Chained timers reach h once, when they are due.
func (r *Router) HandleTimers(h HandlerFunc) {
	switch {
	case h == nil:
		r.errs = append(r.errs, errors.New("timer handler is nil"))
	case !slices.Contains(TimerServices, r.cfg.Service):
		r.errs = append(r.errs, fmt.Errorf("service %s has no timer queue (see bus.TimerServices)", r.cfg.Service))
	default:
		r.add(route{queue: r.cfg.Topology.TimerQueueName(r.cfg.Service), timer: true, h: h})
	}
}

// OnReady registers f to run once every queue has been found, before the first receive
// (arming a timer on the service's own timer queue, say): with AwaitQueues it runs only
// after the queues exist. An error from f makes Run fail.
func (r *Router) OnReady(f func(ctx context.Context) error) {
	r.onReady = append(r.onReady, f)
}

func (r *Router) add(rt route) {
	for _, have := range r.routes {
		if have.queue == rt.queue {
			r.errs = append(r.errs, fmt.Errorf("queue %s has two handlers", rt.queue))
			return
		}
	}
	r.routes = append(r.routes, rt)
}

// Run checks that every queue and DLQ it needs exists and reads the queues' visibility
// timeouts, then consumes until ctx is cancelled. Then it shuts down gracefully: it stops
// receiving, lets the handlers in flight finish (for up to CloseTimeout; after that their
// contexts are cancelled and Run returns an error), deletes the messages they
// acknowledged, and returns nil. The messages being handled stay hidden while they drain;
// when Run returns, no heartbeat extends any message any more. Run is called once per
// Router.
//
// Long polls in progress are cancelled at shutdown; a message SQS hands to one at that
// very moment is not lost but stays in flight until its visibility timeout, as on any
// interrupted ReceiveMessage. Messages received but not yet handed to a handler are
// made visible again at once.
func (r *Router) Run(ctx context.Context) error {
	if len(r.routes) == 0 && len(r.errs) == 0 {
		r.errs = append(r.errs, errors.New("no handlers registered"))
	}
	if len(r.errs) > 0 {
		return fmt.Errorf("router for %s: %w", r.cfg.Service, errors.Join(r.errs...))
	}
	visibility, err := r.awaitQueues(ctx)
	if err != nil {
		return fmt.Errorf("router for %s: %w", r.cfg.Service, err)
	}
	if visibility == nil {
		return nil // cancelled while waiting for the queues: nothing was received
	}
	for _, f := range r.onReady {
		if err := f(ctx); err != nil {
			return fmt.Errorf("router for %s: %w", r.cfg.Service, err)
		}
	}

	sub := newSubscriber(r.api, r.queues, subscriberConfig{
		workers:      r.cfg.Concurrency,
		wait:         r.cfg.WaitTime,
		closeTimeout: r.cfg.CloseTimeout,
		logger:       r.cfg.Logger,
		visibility:   visibility,
		maxHandle:    r.cfg.MaxHandle,
		heartbeats:   &r.heartbeats,
		observer:     r.subscriberObserver(),
	})
	wm, err := message.NewRouter(message.RouterConfig{CloseTimeout: r.cfg.CloseTimeout}, r.wmLog)
	if err != nil {
		return fmt.Errorf("creating router: %w", err)
	}
	for _, rt := range r.routes {
		wm.AddConsumerHandler(rt.queue, rt.queue, sub, r.stack(rt))
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	closed := make(chan error, 1)
	go func() {
		<-runCtx.Done()
		closed <- wm.Close()
	}()
	queues := make([]string, len(r.routes))
	for i, rt := range r.routes {
		queues[i] = rt.queue
	}
	r.cfg.Logger.Info("consuming", "queues", queues, "concurrency", r.cfg.Concurrency, "max_handle", r.cfg.MaxHandle.String())
	runErr := wm.Run(runCtx)
	cancel()
	wmCloseErr := <-closed
	subErr := sub.Close()
	switch {
	case runErr != nil:
		return fmt.Errorf("running router for %s: %w", r.cfg.Service, errors.Join(runErr, subErr))
	case subErr != nil:
		return subErr
	case wmCloseErr != nil:
		return fmt.Errorf("shutdown: %w", wmCloseErr)
	}
	r.cfg.Logger.Info("stopped: every message in flight was handled")
	return nil
}

// Bounds of the wait between two checks of the queues while AwaitQueues waits for them.
const (
	awaitFirst = 500 * time.Millisecond
	awaitMax   = 5 * time.Second
)

// awaitQueues runs preflight, and with AwaitQueues set runs it again until it passes or
// ctx is cancelled (then it returns nil, nil). Every check is reported to the Observer.
func (r *Router) awaitQueues(ctx context.Context) (map[string]time.Duration, error) {
	wait := awaitFirst
	var last string
	for {
		visibility, status, err := r.preflight(ctx)
		if r.cfg.Observer != nil && ctx.Err() == nil {
			r.cfg.Observer.QueuesChecked(status)
		}
		if err == nil || !r.cfg.AwaitQueues {
			return visibility, err
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		if msg := err.Error(); msg != last {
			r.cfg.Logger.Warn("waiting for queues", "error", msg, "retry_every", awaitMax.String())
			last = msg
		}
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(wait):
		}
		wait = min(2*wait, awaitMax)
	}
}

// preflight resolves every queue and DLQ the routes use, reporting all the missing ones,
// and reads the visibility timeout of each queue read from. status holds every queue
// and DLQ checked with nil or its error.
func (r *Router) preflight(ctx context.Context) (map[string]time.Duration, map[string]error, error) {
	var errs []error
	visibility := map[string]time.Duration{}
	status := map[string]error{}
	for _, rt := range r.routes {
		for _, q := range []string{rt.queue, DLQName(rt.queue)} {
			url, err := r.queues.url(ctx, q)
			status[q] = err
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if q != rt.queue {
				continue
			}
			v, err := queueVisibility(ctx, r.api, q, url)
			if err != nil {
				status[q] = err
				errs = append(errs, err)
				continue
			}
			if v == 0 {
				r.cfg.Logger.Warn("queue has no visibility timeout: other consumers may receive its messages while they are handled", "queue", q)
			}
			visibility[q] = v
		}
	}
	return visibility, status, errors.Join(errs...)
}

// watermillLogger adapts logger for watermill, whose chatty Info lines become Debug.
func watermillLogger(logger *slog.Logger) watermill.LoggerAdapter {
	return watermill.NewSlogLoggerWithLevelMapping(logger, map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug})
}
