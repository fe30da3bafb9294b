package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	wmsqs "github.com/ThreeDotsLabs/watermill-aws/sqs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// receiveAPI is the SQS calls the subscriber makes.
type receiveAPI interface {
	ReceiveMessage(ctx context.Context, params *sqs.ReceiveMessageInput, optFns ...func(*sqs.Options)) (*sqs.ReceiveMessageOutput, error)
	DeleteMessage(ctx context.Context, params *sqs.DeleteMessageInput, optFns ...func(*sqs.Options)) (*sqs.DeleteMessageOutput, error)
	ChangeMessageVisibility(ctx context.Context, params *sqs.ChangeMessageVisibilityInput, optFns ...func(*sqs.Options)) (*sqs.ChangeMessageVisibilityOutput, error)
}

// subscriber is a watermill message.Subscriber for SQS queues that drains on shutdown.
//
// watermill-aws's SQS subscriber (v1.0.3) is not used for consuming because it cannot
// drain: on Close or context cancellation it stops waiting for the ack of a message in
// flight and never deletes it ("message discarded before ack"), and its messages'
// contexts derive from the subscription context, which watermill's router cancels as
// soon as it starts closing. Here, a shutdown (Close, or cancellation of the Subscribe
// context) stops receiving, lets every handed-out message be acked or nacked, deletes the
// acked ones, and only cancels the messages' contexts if that outlasts closeTimeout.
// While a message is being handled, a heartbeat keeps it hidden from other consumers
// (see heartbeat), draining included, up to maxHandle after it was received.
// Messages are decoded with watermill-aws's unmarshaler, so attributes and the uuid
// round-trip exactly as its publishers write them.
type subscriber struct {
	api          receiveAPI
	queues       *queueResolver
	workers      int
	waitSeconds  int32
	closeTimeout time.Duration
	logger       *slog.Logger
	visibility   map[string]time.Duration // queue name → VisibilityTimeout; 0 or absent: no heartbeat
	maxHandle    time.Duration
	heartbeats   *atomic.Int64 // running heartbeats; may be nil
	observer     Observer      // may be nil

	msgCtx   context.Context // parent of every message's context
	hardStop context.CancelFunc

	closing   chan struct{}
	closeOnce sync.Once
	closed    chan struct{}
	closeErr  error
	workersWg sync.WaitGroup
}

var _ message.Subscriber = (*subscriber)(nil)

// subscriberConfig configures a subscriber.
type subscriberConfig struct {
	workers      int           // messages handled at once per queue
	wait         time.Duration // long-poll duration, whole seconds
	closeTimeout time.Duration
	logger       *slog.Logger
	visibility   map[string]time.Duration // each queue's VisibilityTimeout
	maxHandle    time.Duration            // how long a heartbeat may keep a message hidden
	heartbeats   *atomic.Int64            // counts running heartbeats; may be nil
	observer     Observer                 // sees receive failures and message ages; may be nil
}

func newSubscriber(api receiveAPI, queues *queueResolver, c subscriberConfig) *subscriber {
	msgCtx, hardStop := context.WithCancel(context.Background())
	return &subscriber{
		api:          api,
		queues:       queues,
		workers:      c.workers,
		waitSeconds:  int32(c.wait / time.Second),
		closeTimeout: c.closeTimeout,
		logger:       c.logger,
		visibility:   c.visibility,
		maxHandle:    c.maxHandle,
		heartbeats:   c.heartbeats,
		observer:     c.observer,
		msgCtx:       msgCtx,
		hardStop:     hardStop,
		closing:      make(chan struct{}),
		closed:       make(chan struct{}),
	}
}

// Subscribe starts receiving from the named queue until ctx is cancelled or the
// subscriber is closed. The queue must exist.
func (s *subscriber) Subscribe(ctx context.Context, queue string) (<-chan *message.Message, error) {
	select {
	case <-s.closing:
		return nil, errors.New("subscriber closed")
	default:
	}
	url, err := s.queues.url(ctx, queue)
	if err != nil {
		return nil, err
	}
	recvCtx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-s.closing:
		case <-recvCtx.Done():
		}
		cancel()
	}()
	out := make(chan *message.Message)
	var wg sync.WaitGroup
	for range s.workers {
		wg.Add(1)
		s.workersWg.Add(1)
		go func() {
			defer s.workersWg.Done()
			defer wg.Done()
			s.receive(recvCtx, queue, url, out)
		}()
	}
	go func() {
		wg.Wait()
		cancel()
		close(out)
	}()
	return out, nil
}

// receive polls one queue until ctx is done, handing out one message at a time and
// waiting for its outcome before polling again.
func (s *subscriber) receive(ctx context.Context, queue, url string, out chan<- *message.Message) {
	logger := s.logger.With("queue", queue)
	backoff := 100 * time.Millisecond
	failing := false // the last receive failed
	for ctx.Err() == nil {
		res, err := s.api.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
			QueueUrl:              aws.String(url),
			MaxNumberOfMessages:   1,
			WaitTimeSeconds:       s.waitSeconds,
			MessageAttributeNames: []string{"All"},
			MessageSystemAttributeNames: []sqstypes.MessageSystemAttributeName{
				sqstypes.MessageSystemAttributeNameApproximateReceiveCount,
				sqstypes.MessageSystemAttributeNameSentTimestamp,
			},
		})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if s.observer != nil && !failing {
				s.observer.QueueStatus(queue, fmt.Errorf("receiving from queue %s: %w", queue, err))
			}
			failing = true
			logger.Warn("receiving messages", "error", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		received := time.Now() // SQS started the messages' visibility timeouts just before
		backoff = 100 * time.Millisecond
		if s.observer != nil {
			if failing {
				s.observer.QueueStatus(queue, nil)
			}
			for _, m := range res.Messages {
				if age, ok := sentAge(m, received); ok {
					s.observer.MessageReceived(queue, age)
				}
			}
		}
		failing = false
		for i, m := range res.Messages {
			if !s.deliver(ctx, queue, url, m, received, out) {
				// Shutting down: release what was received but not handed out.
				for _, rest := range res.Messages[i+1:] {
					s.release(url, rest)
				}
				return
			}
		}
	}
}

// deliver hands m to the router and waits for its outcome, keeping m hidden meanwhile.
// It returns false when the subscriber stopped before m could be handed out.
func (s *subscriber) deliver(ctx context.Context, queue, url string, m sqstypes.Message, received time.Time, out chan<- *message.Message) bool {
	msg, err := wmsqs.DefaultMarshalerUnmarshaler{}.Unmarshal(&m)
	if err != nil {
		// The default unmarshaler never fails; if it ever does, let SQS redeliver and
		// eventually dead-letter the message.
		s.logger.Error("decoding sqs message", "queue", queue, "error", err)
		return true
	}
	count, _ := strconv.Atoi(m.Attributes[string(sqstypes.MessageSystemAttributeNameApproximateReceiveCount)])
	logger := &atomic.Pointer[slog.Logger]{}
	logger.Store(s.logger.With("queue", queue, "message_uuid", msg.UUID, "receive_count", count))
	msg.SetContext(context.WithValue(s.msgCtx, deliveryKey, delivery{queue: queue, receiveCount: count, logger: logger}))

	hb := s.heartbeat(queue, url, m, received, logger)
	defer hb.stop()

	select {
	case out <- msg:
	case <-ctx.Done():
		hb.stop()
		s.release(url, m)
		return false
	}

	select {
	case <-msg.Acked():
		// Delete even when shutting down: the work is done.
		hb.stop()
		dctx, cancel := context.WithTimeout(context.WithoutCancel(s.msgCtx), 10*time.Second)
		defer cancel()
		if _, err := s.api.DeleteMessage(dctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(url), ReceiptHandle: m.ReceiptHandle}); err != nil {
			logger.Load().Error("deleting handled message; it will be redelivered", "error", err)
		}
	case <-msg.Nacked():
		// Left in flight, no longer extended: SQS redelivers it once what is left of its
		// visibility timeout (at most the queue's) has passed, and its redrive policy
		// dead-letters it after MaxReceiveCount deliveries.
	case <-s.msgCtx.Done():
		// Hard stop after closeTimeout: the handler did not finish; the heartbeat stops
		// with msgCtx and SQS redelivers the message after its visibility timeout.
	}
	return true
}

// heartbeat starts keeping m hidden while it is handled; nil when its queue has no
// visibility timeout to extend.
func (s *subscriber) heartbeat(queue, url string, m sqstypes.Message, received time.Time, logger *atomic.Pointer[slog.Logger]) *heartbeat {
	v := s.visibility[queue]
	if v <= 0 {
		return nil
	}
	hb := &heartbeat{
		api:        s.api,
		url:        url,
		receipt:    m.ReceiptHandle,
		visibility: v,
		every:      v / 3,
		maxHandle:  s.maxHandle,
		received:   received,
		logger:     logger,
		live:       s.heartbeats,
	}
	// A child of msgCtx: a hard stop ends it even if the handler never returns.
	hb.start(s.msgCtx)
	return hb
}

// release makes a received message visible again at once, so another consumer can take
// it without waiting for the visibility timeout. Best effort.
func (s *subscriber) release(url string, m sqstypes.Message) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.msgCtx), 5*time.Second)
	defer cancel()
	_, err := s.api.ChangeMessageVisibility(ctx, &sqs.ChangeMessageVisibilityInput{
		QueueUrl: aws.String(url), ReceiptHandle: m.ReceiptHandle, VisibilityTimeout: 0,
	})
	if err != nil {
		s.logger.Debug("releasing unhandled message", "error", err)
	}
}

// Close stops receiving on every queue, waits for the messages in flight to be acked or
// nacked (and the acked ones deleted) for up to closeTimeout, then cancels the contexts
// of those still running. It returns an error if the timeout was hit. Close may be called
// more than once; every call waits for the shutdown to finish.
func (s *subscriber) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		go func() {
			drained := make(chan struct{})
			go func() {
				s.workersWg.Wait()
				close(drained)
			}()
			select {
			case <-drained:
			case <-time.After(s.closeTimeout):
				s.closeErr = fmt.Errorf("shutdown: handlers still running after %s; cancelled them, their messages will be redelivered", s.closeTimeout)
				s.hardStop()
				<-drained
			}
			s.hardStop()
			close(s.closed)
		}()
	})
	<-s.closed
	return s.closeErr
}
