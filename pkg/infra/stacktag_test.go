package infra

import (
	"context"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// owners reads the sortie:stack tag of every topic, queue, the EC2 notices' rule (named
// "<rule> (rule)": it has the name of the queue) and the buckets of topo.
func owners(t *testing.T, s stack, topo bus.Topology) map[string]owner {
	t.Helper()
	ctx := t.Context()
	tg := stackTagger{c: s.c}
	out := map[string]owner{}
	topics, err := listTopics(ctx, s.c.SNS)
	if err != nil {
		t.Fatal(err)
	}
	for _, et := range bus.EventTypes {
		name := topo.TopicName(et)
		if arn, ok := topics[name]; ok {
			if out[name], err = tg.topicOwner(ctx, arn); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, q := range queueNames(topo) {
		url, err := queueURL(ctx, s.c.SQS, q)
		if err != nil {
			t.Fatal(err)
		}
		if url != "" {
			if out[q], err = tg.queueOwner(ctx, url); err != nil {
				t.Fatal(err)
			}
		}
	}
	if rule, err := s.c.EventBridge.DescribeRule(ctx, &eventbridge.DescribeRuleInput{Name: aws.String(topo.EC2EventsRuleName())}); err == nil {
		if out[topo.EC2EventsRuleName()+" (rule)"], err = tg.ruleOwner(ctx, aws.ToString(rule.Arn)); err != nil {
			t.Fatal(err)
		}
	} else if !awsx.IsNotFound(err) {
		t.Fatal(err)
	}
	for _, b := range []string{topo.BucketName(), topo.SecretsBucketName()} {
		if _, err := s.s3.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(b)}); err == nil {
			if out[b], err = tg.bucketOwner(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}

func TestUpTagsEverythingWithTheStack(t *testing.T) {
	s := newStack(t)
	topo := bus.Topology{Prefix: uniquePrefix(t)}
	up(t, s, topo)
	got := owners(t, s, topo)
	if want := len(bus.EventTypes) + len(queueNames(topo)) + 1 + 2; len(got) != want {
		t.Fatalf("%d resources found, want %d", len(got), want)
	}
	for name, o := range got {
		if !o.tagged || o.stack != topo.Prefix {
			t.Errorf("%s: %s, want %s=%s", name, o, tags.Stack, topo.Prefix)
		}
	}
}

func TestUpAdoptsUntaggedRefusesAnotherStacks(t *testing.T) {
	s := newStack(t)
	ctx := context.Background()
	topo := bus.Topology{Prefix: uniquePrefix(t)}
	// Made by hand (or by an older Sortie) without tags: adopted, and said so.
	timer := topo.TimerQueueName(bus.Reaper)
	if _, err := s.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(timer)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.sns.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(topo.TopicName(bus.JobFinished))}); err != nil {
		t.Fatal(err)
	}
	putRule(t, s, topo.EC2EventsRuleName(), "")
	r := up(t, s, topo)
	for _, name := range []string{timer, topo.TopicName(bus.JobFinished), topo.EC2EventsRuleName()} {
		found := false
		for _, l := range r.Lines {
			found = found || (l.Kind == KindStackTag && l.Name == name && l.Action == Updated)
		}
		if !found {
			t.Errorf("no updated stack-tag line for %s:\n%s", name, r)
		}
	}
	for name, o := range owners(t, s, topo) {
		if o.stack != topo.Prefix {
			t.Errorf("%s: %s after up", name, o)
		}
	}

	t.Run("another stack's rule of the same name: an error, left as it is", func(t *testing.T) {
		other := bus.Topology{Prefix: uniquePrefix(t)}
		putRule(t, s, other.EC2EventsRuleName(), "someone-else")
		r, err := Up(ctx, s.c, other)
		if err == nil || !strings.Contains(err.Error(), "event-rule "+other.EC2EventsRuleName()+" belongs to another stack") {
			t.Fatalf("Up = %v, want a refusal", err)
		}
		if o := owners(t, s, other)[other.EC2EventsRuleName()+" (rule)"]; o.stack != "someone-else" {
			t.Errorf("rule now %s", o)
		}
		for _, l := range r.Lines {
			if l.Kind == KindRuleTarget || l.Kind == KindEventsQueue {
				t.Errorf("up went on past the refused rule: %+v", l)
			}
		}
		if targets, err := listTargets(ctx, s.c.EventBridge, other.EC2EventsRuleName()); err != nil || len(targets) != 0 {
			t.Errorf("the other stack's rule got targets %+v (%v)", targets, err)
		}
	})

	t.Run("another stack's bucket of the same name: an error, left as it is", func(t *testing.T) {
		other := bus.Topology{Prefix: uniquePrefix(t)}
		if _, err := s.s3.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(other.BucketName())}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.s3.PutBucketTagging(ctx, &s3.PutBucketTaggingInput{Bucket: aws.String(other.BucketName()), Tagging: &s3types.Tagging{
			TagSet: []s3types.Tag{{Key: aws.String(tags.Stack), Value: aws.String("someone-else")}},
		}}); err != nil {
			t.Fatal(err)
		}
		_, err := Up(ctx, s.c, other)
		if err == nil || !strings.Contains(err.Error(), "belongs to another stack") {
			t.Fatalf("Up = %v, want a refusal", err)
		}
		if o := owners(t, s, other)[other.BucketName()]; o.stack != "someone-else" {
			t.Errorf("bucket now %s", o)
		}
	})
}

func TestDownDeletesOnlyWhatCarriesItsStack(t *testing.T) {
	s := newStack(t)
	ctx := context.Background()
	topo := bus.Topology{Prefix: uniquePrefix(t)}
	// Resources with the stack's names that are not the stack's: an untagged queue, a topic
	// tagged for another stack, and an untagged bucket.
	timer := topo.TimerQueueName(bus.Monitor)
	if _, err := s.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(timer)}); err != nil {
		t.Fatal(err)
	}
	topic := topo.TopicName(bus.FleetTerminated)
	if _, err := s.sns.CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(topic), Tags: []snstypes.Tag{{Key: aws.String(tags.Stack), Value: aws.String("someone-else")}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.s3.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(topo.BucketName())}); err != nil {
		t.Fatal(err)
	}
	putRule(t, s, topo.EC2EventsRuleName(), "someone-else")
	r, err := Down(ctx, s.c, topo)
	if err != nil {
		t.Fatalf("Down: %v\n%s", err, r)
	}
	if _, err := s.c.EventBridge.DescribeRule(ctx, &eventbridge.DescribeRuleInput{Name: aws.String(topo.EC2EventsRuleName())}); err != nil {
		t.Errorf("the other stack's rule was deleted: %v", err)
	}
	for _, name := range []string{timer, topic, topo.BucketName(), topo.EC2EventsRuleName()} {
		kept := false
		for _, l := range r.Lines {
			kept = kept || (l.Name == name && l.Action == Kept && strings.Contains(l.Detail, "not this stack's"))
		}
		if !kept {
			t.Errorf("%s not reported kept:\n%s", name, r)
		}
	}
	left := owners(t, s, topo)
	for _, name := range []string{timer, topic, topo.BucketName()} {
		if _, ok := left[name]; !ok {
			t.Errorf("%s, not the stack's, was deleted", name)
		}
	}
	if r.Count(Deleted) != 0 {
		t.Errorf("Down deleted what the stack does not own:\n%s", r)
	}
}
