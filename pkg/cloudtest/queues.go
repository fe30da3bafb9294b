package cloudtest

import (
	"maps"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/events"
)

// Messages are received messages grouped by their job_id attribute.
type Messages = map[string][]sqstypes.Message

// Collect receives (and deletes) messages from a queue until done says it has enough or
// timeout passes, and returns them grouped by job id. A nil done drains until the timeout.
func Collect(tb testing.TB, client *sqs.Client, queueURL string, timeout time.Duration, done func(Messages) bool) Messages {
	tb.Helper()
	got := Messages{}
	in := &sqs.ReceiveMessageInput{QueueUrl: aws.String(queueURL), MessageAttributeNames: []string{"All"}}
	drain(tb, client, in, timeout, func() bool { return done != nil && done(got) }, func(m sqstypes.Message) {
		id := Attr(m, bus.AttrJobID)
		got[id] = append(got[id], m)
	})
	return got
}

// drain receives (and deletes) messages with in, handing each to take, until enough says
// so or timeout passes.
func drain(tb testing.TB, client *sqs.Client, in *sqs.ReceiveMessageInput, timeout time.Duration, enough func() bool, take func(sqstypes.Message)) {
	tb.Helper()
	ctx := tb.Context()
	queueURL := aws.ToString(in.QueueUrl)
	in.MaxNumberOfMessages, in.WaitTimeSeconds = 10, 1
	for deadline := time.Now().Add(timeout); !enough() && time.Now().Before(deadline); {
		out, err := client.ReceiveMessage(ctx, in)
		if err != nil {
			tb.Fatalf("receiving from %s: %v", queueURL, err)
		}
		for _, m := range out.Messages {
			take(m)
			if _, err := client.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(queueURL), ReceiptHandle: m.ReceiptHandle}); err != nil {
				tb.Fatalf("deleting from %s: %v", queueURL, err)
			}
		}
	}
}

// HasAll returns a Collect predicate satisfied once every job id has n messages.
func HasAll(n int, jobIDs ...string) func(Messages) bool { return hasN[Messages](n, jobIDs...) }

// hasN is satisfied once every key has n values.
func hasN[M ~map[string][]V, V any](n int, keys ...string) func(M) bool {
	return func(got M) bool {
		for _, k := range keys {
			if len(got[k]) < n {
				return false
			}
		}
		return true
	}
}

// Attr returns a message attribute's string value, "" when it is missing.
func Attr(m sqstypes.Message, name string) string {
	if v, ok := m.MessageAttributes[name]; ok {
		return aws.ToString(v.StringValue)
	}
	return ""
}

// Events receives (and deletes) messages from a test queue until n events of jobID (of
// any job when jobID is "") arrived or timeout passed, and returns those events. Every
// message is decoded with decode: one that does not decode fails the test. Events of other
// jobs are dropped.
func Events[E events.Event](tb testing.TB, client *sqs.Client, queueURL, jobID string, n int, timeout time.Duration, decode func([]byte) (E, error)) []E {
	tb.Helper()
	ctx := tb.Context()
	var zero E
	var got []E
	for deadline := time.Now().Add(timeout); len(got) < n && time.Now().Before(deadline); {
		out, err := client.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(queueURL), MaxNumberOfMessages: 10, WaitTimeSeconds: 1})
		if err != nil {
			tb.Fatalf("receiving from %s: %v", queueURL, err)
		}
		for _, m := range out.Messages {
			ev, err := decode([]byte(aws.ToString(m.Body)))
			if err != nil {
				tb.Fatalf("an invalid %s on %s: %v\n%s", zero.EventType(), queueURL, err, aws.ToString(m.Body))
			}
			if _, err := client.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(queueURL), ReceiptHandle: m.ReceiptHandle}); err != nil {
				tb.Fatalf("deleting from %s: %v", queueURL, err)
			}
			if id, _ := ev.IDs(); jobID == "" || id == jobID {
				got = append(got, ev)
			}
		}
	}
	return got
}

// NextEvent waits up to timeout for the next event of jobID on a test queue, as Events
// does; it fails the test when none arrives, or when more than one arrives at once.
func NextEvent[E events.Event](tb testing.TB, client *sqs.Client, queueURL, jobID string, timeout time.Duration, decode func([]byte) (E, error)) E {
	tb.Helper()
	got := Events(tb, client, queueURL, jobID, 1, timeout, decode)
	var zero E
	switch len(got) {
	case 0:
		tb.Fatalf("no %s of %s within %s", zero.EventType(), jobID, timeout)
	case 1:
		return got[0]
	default:
		tb.Fatalf("%d %s of %s at once, want one", len(got), zero.EventType(), jobID)
	}
	return zero
}

// DeadLetter is a message of a DLQ: its body, unchanged, and the reason the bus gave.
type DeadLetter struct {
	Body   string
	Reason string // the sortie_error attribute
}

// DeadLetters receives (and deletes) messages from the named DLQ until every job id has
// one or timeout passes, and returns every message received by job id. A job id with none
// fails the test. Without job ids it drains the DLQ until the timeout.
func DeadLetters(tb testing.TB, client *sqs.Client, dlq string, timeout time.Duration, jobIDs ...string) map[string][]DeadLetter {
	tb.Helper()
	var done func(Messages) bool
	if len(jobIDs) > 0 {
		done = HasAll(1, jobIDs...)
	}
	got := Collect(tb, client, QueueURL(tb, client, dlq), timeout, done)
	var missing []string
	for _, id := range jobIDs {
		if len(got[id]) == 0 {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		tb.Fatalf("%v not in %s after %s (it holds %v)", missing, dlq, timeout, slices.Sorted(maps.Keys(got)))
	}
	out := map[string][]DeadLetter{}
	for id, ms := range got {
		for _, m := range ms {
			out[id] = append(out[id], DeadLetter{Body: aws.ToString(m.Body), Reason: Attr(m, bus.AttrError)})
		}
	}
	return out
}

// QueueURL returns the URL of a queue by name.
func QueueURL(tb testing.TB, client *sqs.Client, name string) string {
	tb.Helper()
	out, err := client.GetQueueUrl(tb.Context(), &sqs.GetQueueUrlInput{QueueName: aws.String(name)})
	if err != nil {
		tb.Fatalf("queue %s: %v", name, err)
	}
	return aws.ToString(out.QueueUrl)
}

// QueueDepth returns how many messages the named queue holds, visible or in flight. (It
// reads the queue's attributes: a receive would long-poll for the queue's wait time.)
func QueueDepth(tb testing.TB, client *sqs.Client, name string) int {
	tb.Helper()
	a, err := client.GetQueueAttributes(tb.Context(), &sqs.GetQueueAttributesInput{
		QueueUrl: aws.String(QueueURL(tb, client, name)),
		AttributeNames: []sqstypes.QueueAttributeName{
			sqstypes.QueueAttributeNameApproximateNumberOfMessages, sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible,
		},
	})
	if err != nil {
		tb.Fatalf("depth of %s: %v", name, err)
	}
	n := 0
	for _, attr := range []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameApproximateNumberOfMessages, sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible} {
		v, err := strconv.Atoi(a.Attributes[string(attr)])
		if err != nil {
			tb.Fatalf("%s of %s: %v", attr, name, err)
		}
		n += v
	}
	return n
}
