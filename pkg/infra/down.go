package infra

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
)

// DownOptions tune Down.
type DownOptions struct {
	// EmptyBucket deletes the log bucket's objects so that the bucket can go too. Without
	// it a bucket that holds objects is kept: archived logs are evidence.
	EmptyBucket bool
}

// Down removes what Up creates for topo, looked up by name, and nothing else: other stacks
// in the same account survive. Resources already gone are reported absent, so Down on a
// stack that does not exist succeeds. A non-empty log bucket is kept (see DownOptions).
func Down(ctx context.Context, c Clients, topo bus.Topology, opts ...DownOptions) (Report, error) {
	if len(opts) > 1 {
		return Report{}, errors.New("more than one DownOptions")
	}
	d := downer{c: c, tagger: stackTagger{c: c, stack: topo.Prefix}}
	if len(opts) == 1 {
		d.o = opts[0]
	}
	if err := topo.Validate(); err != nil {
		return Report{}, err
	}
	if err := d.run(ctx, topo); err != nil {
		return d.report, fmt.Errorf("stack %s: %w", topo.Prefix, err)
	}
	return d.report, nil
}

type downer struct {
	c      Clients
	o      DownOptions
	tagger stackTagger
	report Report
}

func (d *downer) run(ctx context.Context, topo bus.Topology) error {
	topics, err := listTopics(ctx, d.c.SNS)
	if err != nil {
		return err
	}
	// A topic of the stack's name without the stack's tag is not the stack's: it is kept,
	// and so are its subscriptions.
	notOurs := map[string]bool{}
	for _, et := range bus.EventTypes {
		name := topo.TopicName(et)
		arn, ok := topics[name]
		if !ok {
			continue
		}
		ours, err := d.tagger.ours(&d.report, KindTopic, name, func() (owner, error) { return d.tagger.topicOwner(ctx, arn) })
		if err != nil {
			return err
		}
		if !ours {
			notOurs[name] = true
			delete(topics, name)
		}
	}
	subsByTopic := make(map[string][]snstypes.Subscription)
	for _, s := range topo.Subscriptions() {
		arn, ok := topics[s.Topic]
		if !ok {
			if !notOurs[s.Topic] {
				d.report.add(Absent, KindSubscription, s.Topic+" -> "+s.Queue, "")
			}
			continue
		}
		subs, ok := subsByTopic[arn]
		if !ok {
			if subs, err = listSubscriptions(ctx, d.c.SNS, arn); err != nil {
				return err
			}
			subsByTopic[arn] = subs
		}
		if err := d.unsubscribe(ctx, subs, s.Topic, s.Queue); err != nil {
			return err
		}
	}

	for _, et := range bus.EventTypes {
		name := topo.TopicName(et)
		arn, ok := topics[name]
		if !ok {
			if !notOurs[name] {
				d.report.add(Absent, KindTopic, name, "")
			}
			continue
		}
		_, err := d.c.SNS.DeleteTopic(ctx, &sns.DeleteTopicInput{TopicArn: aws.String(arn)})
		switch {
		case awsx.IsNotFound(err):
			d.report.add(Absent, KindTopic, name, "")
		case err != nil:
			return fmt.Errorf("deleting topic %s: %w", name, err)
		default:
			d.report.add(Deleted, KindTopic, name, "")
		}
	}

	// The rule goes before its queue, so that nothing is routed to a queue being deleted.
	if err := d.deleteEC2EventsRule(ctx, topo); err != nil {
		return err
	}

	for _, s := range topo.Subscriptions() {
		if err := d.deleteQueue(ctx, KindQueue, s.Queue); err != nil {
			return err
		}
		if err := d.deleteQueue(ctx, KindDLQ, s.DLQ); err != nil {
			return err
		}
	}
	for _, svc := range bus.TimerServices {
		q := topo.TimerQueueName(svc)
		if err := d.deleteQueue(ctx, KindTimerQueue, q); err != nil {
			return err
		}
		if err := d.deleteQueue(ctx, KindDLQ, bus.DLQName(q)); err != nil {
			return err
		}
	}
	q := topo.EC2EventsQueueName()
	if err := d.deleteQueue(ctx, KindEventsQueue, q); err != nil {
		return err
	}
	if err := d.deleteQueue(ctx, KindDLQ, bus.DLQName(q)); err != nil {
		return err
	}

	if err := d.deleteTable(ctx, topo.LedgerTableName(), topo.Prefix); err != nil {
		return err
	}
	// The secrets bucket goes only when empty: Down never deletes a login key.
	if err := d.deleteBucket(ctx, topo.SecretsBucketName(), false); err != nil {
		return err
	}
	return d.deleteBucket(ctx, topo.BucketName(), d.o.EmptyBucket)
}

// unsubscribe removes the topic's SQS subscriptions whose endpoint is the queue (by name:
// the queue may be gone already).
func (d *downer) unsubscribe(ctx context.Context, subs []snstypes.Subscription, topic, queue string) error {
	name := topic + " -> " + queue
	n := 0
	for _, s := range subs {
		ep := aws.ToString(s.Endpoint)
		if aws.ToString(s.Protocol) != "sqs" || !strings.HasPrefix(ep, "arn:") || ep[strings.LastIndex(ep, ":")+1:] != queue {
			continue
		}
		_, err := d.c.SNS.Unsubscribe(ctx, &sns.UnsubscribeInput{SubscriptionArn: s.SubscriptionArn})
		if awsx.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("unsubscribing %s: %w", name, err)
		}
		n++
	}
	switch n {
	case 0:
		d.report.add(Absent, KindSubscription, name, "")
	case 1:
		d.report.add(Deleted, KindSubscription, name, "")
	default:
		d.report.add(Deleted, KindSubscription, name, fmt.Sprintf("%d duplicate subscriptions", n))
	}
	return nil
}

func (d *downer) deleteQueue(ctx context.Context, kind Kind, name string) error {
	url, err := queueURL(ctx, d.c.SQS, name)
	if err != nil {
		return err
	}
	if url == "" {
		d.report.add(Absent, kind, name, "")
		return nil
	}
	ours, err := d.tagger.ours(&d.report, kind, name, func() (owner, error) { return d.tagger.queueOwner(ctx, url) })
	if err != nil || !ours {
		return err
	}
	_, err = d.c.SQS.DeleteQueue(ctx, &sqs.DeleteQueueInput{QueueUrl: aws.String(url)})
	switch {
	case awsx.IsNotFound(err):
		d.report.add(Absent, kind, name, "")
	case err != nil:
		return fmt.Errorf("deleting queue %s: %w", name, err)
	default:
		d.report.add(Deleted, kind, name, "")
	}
	return nil
}

// deleteBucket deletes a bucket when it is empty, or emptied first with empty. Its policy,
// encryption and public access block go with it.
func (d *downer) deleteBucket(ctx context.Context, name string, empty bool) error {
	_, err := d.c.S3.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(name)})
	if awsx.IsNotFound(err) {
		d.report.add(Absent, KindBucket, name, "")
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking bucket %s: %w", name, err)
	}
	ours, err := d.tagger.ours(&d.report, KindBucket, name, func() (owner, error) { return d.tagger.bucketOwner(ctx, name) })
	if err != nil || !ours {
		return err
	}

	if empty {
		n, err := d.emptyBucket(ctx, name)
		if err != nil {
			return err
		}
		if n > 0 {
			d.report.add(Deleted, KindObjects, name, plural(n, "object"))
		}
	} else {
		n, err := d.countObjects(ctx, name)
		if err != nil {
			return err
		}
		if n > 0 {
			d.report.add(Kept, KindBucket, name, "bucket not empty ("+plural(n, "object")+")")
			return nil
		}
	}

	_, err = d.c.S3.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(name)})
	switch {
	case awsx.IsNotFound(err):
		d.report.add(Absent, KindBucket, name, "")
	case awsx.ErrorCode(err) == "BucketNotEmpty": // an upload landed meanwhile
		d.report.add(Kept, KindBucket, name, "bucket not empty (objects arrived during down)")
	case err != nil:
		return fmt.Errorf("deleting bucket %s: %w", name, err)
	default:
		d.report.add(Deleted, KindBucket, name, "")
	}
	return nil
}

func (d *downer) countObjects(ctx context.Context, bucket string) (int, error) {
	n := 0
	p := s3.NewListObjectsV2Paginator(d.c.S3, &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return 0, fmt.Errorf("listing objects of %s: %w", bucket, err)
		}
		n += len(page.Contents)
	}
	return n, nil
}

// emptyBucket deletes every object, the first listed page (at most 1000 keys, DeleteObjects'
// limit) at a time until none is left; it does not page on, since deleting moves the listing.
// Versioned buckets are not handled: neither Up nor the Terraform enables versioning on the
// log bucket.
func (d *downer) emptyBucket(ctx context.Context, bucket string) (int, error) {
	n := 0
	for {
		page, err := d.c.S3.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
		if err != nil {
			return n, fmt.Errorf("listing objects of %s: %w", bucket, err)
		}
		if len(page.Contents) == 0 {
			return n, nil
		}
		ids := make([]s3types.ObjectIdentifier, len(page.Contents))
		for i, o := range page.Contents {
			ids[i] = s3types.ObjectIdentifier{Key: o.Key}
		}
		out, err := d.c.S3.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: aws.String(bucket),
			Delete: &s3types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return n, fmt.Errorf("deleting objects of %s: %w", bucket, err)
		}
		if len(out.Errors) > 0 {
			e := out.Errors[0]
			return n, fmt.Errorf("deleting objects of %s: %d failed, first %s: %s %s",
				bucket, len(out.Errors), aws.ToString(e.Key), aws.ToString(e.Code), aws.ToString(e.Message))
		}
		n += len(ids)
	}
}
