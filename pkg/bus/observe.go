package bus

import (
	"strconv"
	"time"

	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// Outcome is what became of one delivery of a message, as an Observer sees it.
type Outcome string

const (
	// OutcomeHandled: the handler succeeded; the message is deleted.
	OutcomeHandled Outcome = "handled"
	// OutcomeFailed: the handler failed after its retries; SQS delivers the message again
	// (and dead-letters it after MaxReceiveCount deliveries).
	OutcomeFailed Outcome = "failed"
	// OutcomeDeadLettered: a permanent error sent the message to its queue's DLQ.
	OutcomeDeadLettered Outcome = "dead_lettered"
)

// TimerEventType is the event type an Observer is given for a message of a timer queue.
const TimerEventType = "timer"

// Observer sees what a Router does, for metrics and readiness (pkg/telemetry implements
// it). Its methods are called from many goroutines at once and must not block.
type Observer interface {
	// QueuesChecked reports the router's start-up check of every queue and DLQ it uses:
	// each name with nil when it is reachable, or why not.
	QueuesChecked(status map[string]error)
	// QueueStatus reports a change in whether a queue the router reads can be received
	// from: an error when a receive failed, nil when receiving works again.
	QueueStatus(queue string, err error)
	// MessageReceived reports a message's age when it was received: the time since SQS
	// first accepted it (its SentTimestamp). Timer queues' messages, delayed on purpose,
	// are not reported.
	MessageReceived(queue string, age time.Duration)
	// HandlerStarted and HandlerDone bracket the handling of one delivery, retries
	// included. eventType is the queue's event type, or TimerEventType.
	HandlerStarted(eventType string)
	HandlerDone(eventType string, took time.Duration, outcome Outcome)
}

// subscriberObserver is the Observer the subscriber reports to: the configured one, without
// the ages of timer messages, which wait in their queue on purpose (nil without one).
func (r *Router) subscriberObserver() Observer {
	if r.cfg.Observer == nil {
		return nil
	}
	timers := map[string]bool{}
	for _, rt := range r.routes {
		if rt.timer {
			timers[rt.queue] = true
		}
	}
	return timerAges{Observer: r.cfg.Observer, timers: timers}
}

// timerAges drops MessageReceived for timer queues.
type timerAges struct {
	Observer
	timers map[string]bool
}

func (t timerAges) MessageReceived(queue string, age time.Duration) {
	if !t.timers[queue] {
		t.Observer.MessageReceived(queue, age)
	}
}

// sentAge returns the time between m's SentTimestamp and now; false without one.
func sentAge(m sqstypes.Message, now time.Time) (time.Duration, bool) {
	raw, ok := m.Attributes[string(sqstypes.MessageSystemAttributeNameSentTimestamp)]
	if !ok {
		return 0, false
	}
	ms, err := strconv.ParseInt(raw, 10, 64)
	if err != nil {
		return 0, false
	}
	return max(now.Sub(time.UnixMilli(ms)), 0), true
}
