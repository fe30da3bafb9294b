package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
)

// maxVisibility is SQS's limit on how long a message may stay hidden after it was
// received, extensions included.
const maxVisibility = 12 * time.Hour

// visibilityAPI is the SQS call the heartbeat makes.
type visibilityAPI interface {
	ChangeMessageVisibility(ctx context.Context, params *sqs.ChangeMessageVisibilityInput, optFns ...func(*sqs.Options)) (*sqs.ChangeMessageVisibilityOutput, error)
}

// queueAttributesAPI is the SQS call that reads a queue's visibility timeout.
type queueAttributesAPI interface {
	GetQueueAttributes(ctx context.Context, params *sqs.GetQueueAttributesInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueAttributesOutput, error)
}

// queueVisibility reads the VisibilityTimeout of the queue at url.
func queueVisibility(ctx context.Context, api queueAttributesAPI, queue, url string) (time.Duration, error) {
	out, err := api.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl:       aws.String(url),
		AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameVisibilityTimeout},
	})
	if err != nil {
		return 0, fmt.Errorf("reading the visibility timeout of queue %s: %w", queue, err)
	}
	raw, ok := out.Attributes[string(sqstypes.QueueAttributeNameVisibilityTimeout)]
	secs, err := strconv.Atoi(raw)
	if !ok || err != nil || secs < 0 {
		return 0, fmt.Errorf("reading the visibility timeout of queue %s: got %q, want whole seconds", queue, raw)
	}
	return time.Duration(secs) * time.Second, nil
}

// heartbeat keeps one received message hidden from other consumers while it is being
// handled: every visibility/3 it sets the message's visibility timeout to the queue's
// again, until stopped (ack, nack, hard stop) or until maxHandle has passed since the
// message was received; then SQS delivers the message again after what is left of its
// visibility timeout, as for any message not deleted.
type heartbeat struct {
	api        visibilityAPI
	url        string
	receipt    *string
	visibility time.Duration // the queue's VisibilityTimeout: each beat hides the message this long again
	every      time.Duration // visibility/3; tests shorten it
	maxHandle  time.Duration
	received   time.Time
	// logger logs the heartbeat's lines; the router swaps in the message's own logger
	// (job_id, correlation_id, ...) once it has read the ids.
	logger *atomic.Pointer[slog.Logger]
	live   *atomic.Int64 // running heartbeats, for tests; may be nil

	cancel context.CancelFunc
	done   chan struct{}
}

// start starts beating until stop is called or ctx is done.
func (h *heartbeat) start(ctx context.Context) {
	ctx, h.cancel = context.WithCancel(ctx)
	h.done = make(chan struct{})
	if h.live != nil {
		h.live.Add(1)
	}
	go func() {
		defer close(h.done)
		if h.live != nil {
			defer h.live.Add(-1)
		}
		h.run(ctx)
	}()
}

// stop stops the heartbeat and waits until it no longer calls SQS. It may be called
// more than once, and on a nil heartbeat (a queue without a visibility timeout).
func (h *heartbeat) stop() {
	if h == nil {
		return
	}
	h.cancel()
	<-h.done
}

func (h *heartbeat) run(ctx context.Context) {
	t := time.NewTicker(h.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		elapsed := time.Since(h.received)
		secs := extension(h.visibility, h.maxHandle, elapsed)
		logger := h.logger.Load()
		if secs == 0 {
			logger.Warn("message handled for longer than the maximum: no longer hiding it, SQS will deliver it again",
				"max_handle", h.maxHandle.String(), "elapsed", elapsed.Round(time.Millisecond).String())
			return
		}
		cctx, cancel := context.WithTimeout(ctx, max(h.every, time.Second))
		_, err := h.api.ChangeMessageVisibility(cctx, &sqs.ChangeMessageVisibilityInput{
			QueueUrl: aws.String(h.url), ReceiptHandle: h.receipt, VisibilityTimeout: secs,
		})
		cancel()
		switch {
		case err == nil:
			logger.Debug("message still being handled: visibility extended", "visibility_timeout", secs)
		case ctx.Err() != nil:
			return // stopped during the call
		case notInFlight(err):
			logger.Warn("message no longer in flight: no longer extending its visibility", "error", err)
			return
		default:
			logger.Warn("extending message visibility; trying again at the next heartbeat", "error", err, "retry_in", h.every.String())
		}
	}
}

// extension is the visibility timeout, in seconds, to set on a message elapsed after it
// was received: the queue's visibility, cut so the message stays hidden about maxHandle
// in all (rounded up to whole seconds), or 0 once maxHandle has passed.
func extension(visibility, maxHandle, elapsed time.Duration) int32 {
	left := maxHandle - elapsed
	if left <= 0 {
		return 0
	}
	d := min(visibility, left)
	return int32((d + time.Second - 1) / time.Second)
}

// notInFlight reports whether a ChangeMessageVisibility error says the receipt handle no
// longer names a message in flight (deleted, or received again by another consumer):
// extending it again cannot succeed.
func notInFlight(err error) bool {
	var invalid *sqstypes.ReceiptHandleIsInvalid
	var notInflight *sqstypes.MessageNotInflight
	if errors.As(err, &invalid) || errors.As(err, &notInflight) {
		return true
	}
	switch awsx.ErrorCode(err) {
	case "ReceiptHandleIsInvalid", "MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight":
		return true
	}
	return false
}
