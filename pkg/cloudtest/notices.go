package cloudtest

import (
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/ec2events"
)

// ReceivedNotice is one EC2 notice read from a queue, with when SQS says it was sent.
type ReceivedNotice struct {
	ec2events.Notice
	Sent time.Time
}

// String is "spot-interruption-warning" or the state of a state change.
func (n ReceivedNotice) String() string {
	if n.Kind == ec2events.KindStateChange {
		return n.State
	}
	return n.Kind
}

// Notices are received EC2 notices grouped by instance id, each instance's in the order
// received.
type Notices = map[string][]ReceivedNotice

// EC2Notices receives (and deletes) the EC2 notices (EventBridge envelopes, as the local
// cloud delivers them) from a queue until done says it has enough or timeout passes, and
// returns them by instance. EventBridge rules see every instance of the account, so a
// test picks its own instances' notices out; a body that is not an EC2 notice fails the
// test. A nil done drains until the timeout.
func EC2Notices(tb testing.TB, client *sqs.Client, queueURL string, timeout time.Duration, done func(Notices) bool) Notices {
	tb.Helper()
	got := Notices{}
	in := &sqs.ReceiveMessageInput{
		QueueUrl:                    aws.String(queueURL),
		MessageSystemAttributeNames: []sqstypes.MessageSystemAttributeName{sqstypes.MessageSystemAttributeNameSentTimestamp},
	}
	drain(tb, client, in, timeout, func() bool { return done != nil && done(got) }, func(m sqstypes.Message) {
		n, err := ec2events.Parse([]byte(aws.ToString(m.Body)))
		if err != nil {
			tb.Fatalf("a message of %s is not an EC2 notice: %v\n%s", queueURL, err, aws.ToString(m.Body))
		}
		ms, _ := strconv.ParseInt(m.Attributes[string(sqstypes.MessageSystemAttributeNameSentTimestamp)], 10, 64)
		got[n.InstanceID] = append(got[n.InstanceID], ReceivedNotice{Notice: n, Sent: time.UnixMilli(ms)})
	})
	return got
}

// HasNotices returns an EC2Notices predicate satisfied once every instance has n notices.
func HasNotices(n int, instanceIDs ...string) func(Notices) bool {
	return hasN[Notices](n, instanceIDs...)
}
