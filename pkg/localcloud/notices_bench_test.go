package localcloud

import (
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	ebtypes "github.com/aws/aws-sdk-go-v2/service/eventbridge/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/google/uuid"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/ec2events"
	"github.com/sortie-fleet/sortie/pkg/infra"
)

// BenchmarkDeliverNotice measures one notice's delivery with rules matching rules, each
// targeting a queue of its own that admits it (as that many stacks sharing the cloud would
// have).
func BenchmarkDeliverNotice(b *testing.B) {
	for _, rules := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("rules=%d", rules), func(b *testing.B) {
			c := newCloud(b, Options{})
			ctx := b.Context()
			cfg := awsx.ForEndpoint(c.URL())
			eb, q := eventbridge.NewFromConfig(cfg), sqs.NewFromConfig(cfg)
			prefix := "bench" + uuid.NewString()[:8]
			for i := range rules {
				name := fmt.Sprintf("%s-%d", prefix, i)
				out, err := q.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name)})
				if err != nil {
					b.Fatal(err)
				}
				a, err := q.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: out.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
				if err != nil {
					b.Fatal(err)
				}
				rule, err := eb.PutRule(ctx, &eventbridge.PutRuleInput{Name: aws.String(name), EventPattern: aws.String(ec2events.Pattern())})
				if err != nil {
					b.Fatal(err)
				}
				policy, err := infra.RuleQueuePolicy(a.Attributes["QueueArn"], aws.ToString(rule.RuleArn))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := q.SetQueueAttributes(ctx, &sqs.SetQueueAttributesInput{QueueUrl: out.QueueUrl, Attributes: map[string]string{"Policy": string(policy)}}); err != nil {
					b.Fatal(err)
				}
				if _, err := eb.PutTargets(ctx, &eventbridge.PutTargetsInput{Rule: aws.String(name), Targets: []ebtypes.Target{{Id: aws.String("q"), Arn: aws.String(a.Attributes["QueueArn"])}}}); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() {
					_, _ = eb.RemoveTargets(ctx, &eventbridge.RemoveTargetsInput{Rule: aws.String(name), Ids: []string{"q"}})
					_, _ = eb.DeleteRule(ctx, &eventbridge.DeleteRuleInput{Name: aws.String(name)})
					_, _ = q.DeleteQueue(ctx, &sqs.DeleteQueueInput{QueueUrl: out.QueueUrl})
				})
			}
			env := ec2events.StateChange(where, uuid.NewString(), "i-0123456789abcdef0", "terminated", time.Now())
			b.ResetTimer()
			for b.Loop() {
				c.deliver(ctx, env)
			}
		})
	}
}
