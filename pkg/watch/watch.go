// Package watch follows jobs through the pipeline from the outside, as an operator or an
// upstream system does: a queue of its own subscribed to every event topic.
package watch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
)

// SNSAPI is what a Watcher needs of SNS.
type SNSAPI interface {
	CreateTopic(ctx context.Context, in *sns.CreateTopicInput, optFns ...func(*sns.Options)) (*sns.CreateTopicOutput, error)
	Subscribe(ctx context.Context, in *sns.SubscribeInput, optFns ...func(*sns.Options)) (*sns.SubscribeOutput, error)
	Unsubscribe(ctx context.Context, in *sns.UnsubscribeInput, optFns ...func(*sns.Options)) (*sns.UnsubscribeOutput, error)
}

// SQSAPI is what a Watcher needs of SQS.
type SQSAPI interface {
	CreateQueue(ctx context.Context, in *sqs.CreateQueueInput, optFns ...func(*sqs.Options)) (*sqs.CreateQueueOutput, error)
	GetQueueAttributes(ctx context.Context, in *sqs.GetQueueAttributesInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueAttributesOutput, error)
	ReceiveMessage(ctx context.Context, in *sqs.ReceiveMessageInput, optFns ...func(*sqs.Options)) (*sqs.ReceiveMessageOutput, error)
	DeleteMessage(ctx context.Context, in *sqs.DeleteMessageInput, optFns ...func(*sqs.Options)) (*sqs.DeleteMessageOutput, error)
	DeleteQueue(ctx context.Context, in *sqs.DeleteQueueInput, optFns ...func(*sqs.Options)) (*sqs.DeleteQueueOutput, error)
	SetQueueAttributes(ctx context.Context, in *sqs.SetQueueAttributesInput, optFns ...func(*sqs.Options)) (*sqs.SetQueueAttributesOutput, error)
	GetQueueUrl(ctx context.Context, in *sqs.GetQueueUrlInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueUrlOutput, error)
	ChangeMessageVisibility(ctx context.Context, in *sqs.ChangeMessageVisibilityInput, optFns ...func(*sqs.Options)) (*sqs.ChangeMessageVisibilityOutput, error)
}

// Watcher receives every event of a stack on a queue of its own.
type Watcher struct {
	sns      SNSAPI
	sqs      SQSAPI
	queueURL string
	subs     []string
	pending  []events.Event
	dlqs     map[string]string         // name → URL, peeked at by fill
	rejected map[string]*RejectedError // by job id
}

// Open creates the queue <prefix>-watch-<name> and subscribes it, with raw delivery, to
// the topic of every event type, and watches the stack's dead-letter queues. The topics must exist (`sortie infra up`). Close removes
// the queue and the subscriptions.
func Open(ctx context.Context, snsc SNSAPI, sqsc SQSAPI, topo bus.Topology, name string) (*Watcher, error) {
	w := &Watcher{sns: snsc, sqs: sqsc}
	queue := topo.Prefix + "-watch-" + name
	if len(queue) > 80 {
		return nil, fmt.Errorf("watch queue name %q is longer than 80 characters", queue)
	}
	var topicARNs []string
	for _, et := range bus.EventTypes {
		// CreateTopic is idempotent: it returns the existing topic's ARN.
		out, err := snsc.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(topo.TopicName(et))})
		if err != nil {
			return nil, fmt.Errorf("resolving topic of %s: %w", et, err)
		}
		topicARNs = append(topicARNs, aws.ToString(out.TopicArn))
	}
	q, err := sqsc.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(queue)})
	if err != nil {
		return nil, fmt.Errorf("creating watch queue %s: %w", queue, err)
	}
	w.queueURL = aws.ToString(q.QueueUrl)
	attrs, err := sqsc.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl: q.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn},
	})
	if err != nil {
		w.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("reading watch queue ARN: %w", err)
	}
	queueARN := attrs.Attributes[string(sqstypes.QueueAttributeNameQueueArn)]
	policy, err := queuePolicy(queueARN, topicARNs)
	if err == nil {
		_, err = sqsc.SetQueueAttributes(ctx, &sqs.SetQueueAttributesInput{
			QueueUrl: q.QueueUrl, Attributes: map[string]string{"Policy": policy},
		})
	}
	if err != nil {
		w.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("setting watch queue policy: %w", err)
	}
	for _, arn := range topicARNs {
		sub, err := snsc.Subscribe(ctx, &sns.SubscribeInput{
			TopicArn: aws.String(arn), Protocol: aws.String("sqs"), Endpoint: aws.String(queueARN),
			Attributes: map[string]string{"RawMessageDelivery": "true"},
		})
		if err != nil {
			w.Close(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("subscribing watch queue to %s: %w", arn, err)
		}
		w.subs = append(w.subs, aws.ToString(sub.SubscriptionArn))
	}
	if err := w.watchDeadLetters(ctx, topo); err != nil {
		w.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return w, nil
}

// queuePolicy lets the stack's topics (and nothing else) send to the watch queue.
func queuePolicy(queueARN string, topicARNs []string) (string, error) {
	doc := map[string]any{
		"Version": "2012-10-17",
		"Statement": []map[string]any{{
			"Sid":       "AllowStackTopicsSendMessage",
			"Effect":    "Allow",
			"Principal": map[string]string{"Service": "sns.amazonaws.com"},
			"Action":    "sqs:SendMessage",
			"Resource":  queueARN,
			"Condition": map[string]any{"ArnEquals": map[string]any{"aws:SourceArn": topicARNs}},
		}},
	}
	b, err := json.Marshal(doc)
	return string(b), err
}

// Next returns the next event, waiting for one until ctx ends. A message that is not a
// valid event is skipped (and deleted) with its error returned alongside nil.
func (w *Watcher) Next(ctx context.Context) (events.Event, error) {
	for len(w.pending) == 0 {
		if err := w.fill(ctx); err != nil {
			return nil, err
		}
	}
	return w.pop(), nil
}

func (w *Watcher) pop() events.Event {
	ev := w.pending[0]
	w.pending = w.pending[1:]
	return ev
}

// fill makes one receive (waiting up to a second) on the watch queue, and peeks at the
// dead-letter queues being watched.
func (w *Watcher) fill(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	out, err := w.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
		QueueUrl: aws.String(w.queueURL), MaxNumberOfMessages: 10, WaitTimeSeconds: 1,
		MessageAttributeNames: []string{"All"},
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("receiving events: %w", err)
	}
	var bad []error
	for _, m := range out.Messages {
		ev, err := decode(m)
		if err != nil {
			bad = append(bad, err)
		} else {
			w.pending = append(w.pending, ev)
		}
		_, _ = w.sqs.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(w.queueURL), ReceiptHandle: m.ReceiptHandle})
	}
	if err := w.peekDeadLetters(ctx); err != nil {
		return err
	}
	if len(bad) > 0 && len(w.pending) == 0 {
		return errors.Join(bad...)
	}
	return nil
}

// RejectedError says a followed job was rejected: one of its events was dead-lettered
// (Queue names the DLQ), or a stage answered it with a rejected FleetTerminated (Queue is
// empty, RejectedBy names the stage). The pipeline will not take it further.
type RejectedError struct {
	JobID, Queue, EventType, Reason string
	RejectedBy                      string
}

func (e *RejectedError) Error() string {
	if e.Queue == "" {
		return fmt.Sprintf("job %s rejected by %s: %s", e.JobID, e.RejectedBy, e.Reason)
	}
	return fmt.Sprintf("job %s: %s dead-lettered in %s: %s", e.JobID, e.EventType, e.Queue, e.Reason)
}

// watchDeadLetters makes Follow end with a *RejectedError as soon as one of the stack's
// dead-letter queues holds a message of the followed job (a job the planner rejected
// would otherwise be waited for until the timeout). The DLQs are only peeked at: their
// messages stay for operators. Only the first ten messages of a DLQ are seen.
func (w *Watcher) watchDeadLetters(ctx context.Context, topo bus.Topology) error {
	var names []string
	for _, s := range topo.Subscriptions() {
		names = append(names, s.DLQ)
	}
	for _, svc := range bus.TimerServices {
		names = append(names, bus.DLQName(topo.TimerQueueName(svc)))
	}
	w.dlqs = map[string]string{}
	for _, n := range names {
		out, err := w.sqs.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(n)})
		if err != nil {
			return fmt.Errorf("resolving dead-letter queue %s: %w", n, err)
		}
		w.dlqs[n] = aws.ToString(out.QueueUrl)
	}
	w.rejected = map[string]*RejectedError{}
	return nil
}

func (w *Watcher) peekDeadLetters(ctx context.Context) error {
	for name, url := range w.dlqs {
		// Dead-letter queues are almost always empty: ask for the count, which answers at
		// once, and receive only when there is something (a receive would long-poll for
		// the queue's default wait: the SDK does not send a zero WaitTimeSeconds).
		attrs, err := w.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
			QueueUrl: aws.String(url), AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameApproximateNumberOfMessages},
		})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("peeking at %s: %w", name, err)
		}
		if n := attrs.Attributes[string(sqstypes.QueueAttributeNameApproximateNumberOfMessages)]; n == "" || n == "0" {
			continue
		}
		out, err := w.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
			QueueUrl: aws.String(url), MaxNumberOfMessages: 10, WaitTimeSeconds: 1, MessageAttributeNames: []string{"All"},
		})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("peeking at %s: %w", name, err)
		}
		for _, m := range out.Messages {
			attr := func(k string) string {
				if a, ok := m.MessageAttributes[k]; ok {
					return aws.ToString(a.StringValue)
				}
				return ""
			}
			// Put it back at once: the message stays for operators. (A zero
			// VisibilityTimeout on the receive is not sent by the SDK.)
			_, _ = w.sqs.ChangeMessageVisibility(ctx, &sqs.ChangeMessageVisibilityInput{
				QueueUrl: aws.String(url), ReceiptHandle: m.ReceiptHandle, VisibilityTimeout: 0,
			})
			if id := attr(bus.AttrJobID); id != "" && w.rejected[id] == nil {
				w.rejected[id] = &RejectedError{JobID: id, Queue: name, EventType: attr(bus.AttrEventType), Reason: attr(bus.AttrError)}
			}
		}
	}
	return nil
}

func decode(m sqstypes.Message) (events.Event, error) {
	body := aws.ToString(m.Body)
	et := ""
	if a, ok := m.MessageAttributes[bus.AttrEventType]; ok {
		et = aws.ToString(a.StringValue)
	}
	if et == "" {
		// An SNS envelope (subscription without raw delivery) or a sender that set no
		// attribute: the type is not on the wire, so the event cannot be read.
		var env struct{ Message string }
		if json.Unmarshal([]byte(body), &env) == nil && env.Message != "" {
			return nil, errors.New("watch: received an SNS envelope; the subscription must use raw delivery")
		}
		return nil, errors.New("watch: message without an event_type attribute")
	}
	ev, err := events.Decode(et, []byte(body))
	if err != nil {
		return nil, fmt.Errorf("watch: %s: %w", et, err)
	}
	return ev, nil
}

// Follow calls fn with every event of jobID until the job's FleetTerminated arrives, which
// it returns. Events of other jobs are ignored. A dead-lettered event of the job, or a
// rejected FleetTerminated, ends it with a *RejectedError.
func (w *Watcher) Follow(ctx context.Context, jobID string, fn func(events.Event)) (events.FleetTerminated, error) {
	for {
		if r := w.rejected[jobID]; r != nil {
			return events.FleetTerminated{}, r
		}
		if len(w.pending) == 0 {
			if err := w.fill(ctx); err != nil {
				if ctx.Err() != nil {
					return events.FleetTerminated{}, fmt.Errorf("following job %s: %w", jobID, ctx.Err())
				}
				// An undecodable message is not this job's business; an AWS error may
				// pass: try again shortly.
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		ev := w.pop()
		if id, _ := ev.IDs(); id != jobID {
			continue
		}
		if fn != nil {
			fn(ev)
		}
		if ft, ok := ev.(events.FleetTerminated); ok {
			if ft.Outcome == events.OutcomeRejected {
				return ft, &RejectedError{JobID: jobID, EventType: ft.EventType(), Reason: ft.Reason, RejectedBy: ft.RejectedBy}
			}
			return ft, nil
		}
	}
}

// Close unsubscribes and deletes the watch queue.
func (w *Watcher) Close(ctx context.Context) error {
	var errs []error
	for _, s := range w.subs {
		if _, err := w.sns.Unsubscribe(ctx, &sns.UnsubscribeInput{SubscriptionArn: aws.String(s)}); err != nil {
			errs = append(errs, err)
		}
	}
	if w.queueURL != "" {
		if _, err := w.sqs.DeleteQueue(ctx, &sqs.DeleteQueueInput{QueueUrl: aws.String(w.queueURL)}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// revision names a plan revision after the first: "revision 2: ".
func revision(rev int) string {
	if rev <= 1 {
		return ""
	}
	return fmt.Sprintf("revision %d: ", rev)
}

// Describe is a one-line human summary of an event for progress output.
func Describe(ev events.Event) string {
	switch e := ev.(type) {
	case events.JobSubmitted:
		return fmt.Sprintf("JobSubmitted       template=%s profile=%s recipe=%s deadline=%ds", e.Template, e.Profile, e.Recipe, e.DeadlineSeconds)
	case events.FleetPlanned:
		return fmt.Sprintf("FleetPlanned       %s%s", revision(e.PlanRevision), e.Rationale)
	case events.FleetLaunched:
		ids := make([]string, len(e.Instances))
		for i, in := range e.Instances {
			ids[i] = in.ID + "@" + in.SSHEndpoint
		}
		return fmt.Sprintf("FleetLaunched      %s%d instances: %s", revision(e.PlanRevision), len(e.Instances), strings.Join(ids, " "))
	case events.FleetBootstrapped:
		ok := 0
		for _, in := range e.Instances {
			if in.OK {
				ok++
			}
		}
		return fmt.Sprintf("FleetBootstrapped  %s%d/%d instances bootstrapped", revision(e.PlanRevision), ok, len(e.Instances))
	case events.InstanceLost:
		s := fmt.Sprintf("InstanceLost       %s (plan revision %d): %s", e.InstanceID, e.PlanRevision, e.Cause)
		if !e.NoticeDeadline.IsZero() {
			s += ", taken at " + e.NoticeDeadline.UTC().Format(time.RFC3339)
		}
		return s
	case events.TaskReported:
		if e.Exited() && e.ExitCode != nil {
			return fmt.Sprintf("TaskReported       workload %s exited %d on %s", e.TaskID, *e.ExitCode, e.InstanceID)
		}
		return fmt.Sprintf("TaskReported       %s %s on %s (%d ms)", e.TaskID, e.Outcome, e.InstanceID, e.DurationMS)
	case events.JobFinished:
		s := fmt.Sprintf("JobFinished        %s: %d tasks succeeded, %d failed", e.Outcome, e.TasksSucceeded, e.TasksFailed)
		if e.Reason != "" {
			s += " (" + e.Reason + ")"
		}
		return s
	case events.FleetTerminated:
		if e.Outcome == events.OutcomeRejected {
			return fmt.Sprintf("FleetTerminated    rejected by %s: %s", e.RejectedBy, e.Reason)
		}
		s := fmt.Sprintf("FleetTerminated    %s: %d archives, %d instances terminated, %.1f instance-seconds, cost $%.6f (planned $%.6f)",
			e.Outcome, len(e.Archives), len(e.TerminatedInstanceIDs), e.InstanceSeconds, e.Cost, e.PlannedCost)
		for _, f := range e.ArchiveFailures {
			s += fmt.Sprintf("; %s not archived: %s", f.InstanceID, f.Error)
		}
		for _, r := range e.Refused {
			s += fmt.Sprintf("; %s refused (%s: %s)", r.InstanceID, r.Reason, r.Detail)
		}
		return s
	}
	return ev.EventType()
}
