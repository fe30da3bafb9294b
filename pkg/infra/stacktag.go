package infra

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// Every topic, queue and bucket Up creates carries tags.Stack = the stack's prefix (in the
// create call itself where the API takes tags); an existing one without the tag is adopted
// (tagged), and one tagged for another stack is an error. Down deletes only what carries
// its stack's tag.

// KindStackTag is the report line of a resource's sortie:stack tag.
const KindStackTag Kind = "stack-tag"

// stackTagger reads and writes the sortie:stack tag of topics, queues and buckets.
type stackTagger struct {
	c     Clients
	stack string
}

// owner is a resource's sortie:stack tag: its value and whether it is there.
type owner struct {
	stack  string
	tagged bool
}

func (o owner) String() string {
	if !o.tagged {
		return "no " + tags.Stack + " tag"
	}
	return fmt.Sprintf("%s=%s", tags.Stack, o.stack)
}

func (t stackTagger) topicOwner(ctx context.Context, arn string) (owner, error) {
	out, err := t.c.SNS.ListTagsForResource(ctx, &sns.ListTagsForResourceInput{ResourceArn: aws.String(arn)})
	if err != nil {
		return owner{}, fmt.Errorf("reading tags of topic %s: %w", arn, err)
	}
	for _, tg := range out.Tags {
		if aws.ToString(tg.Key) == tags.Stack {
			return owner{stack: aws.ToString(tg.Value), tagged: true}, nil
		}
	}
	return owner{}, nil
}

func (t stackTagger) queueOwner(ctx context.Context, url string) (owner, error) {
	out, err := t.c.SQS.ListQueueTags(ctx, &sqs.ListQueueTagsInput{QueueUrl: aws.String(url)})
	if err != nil {
		return owner{}, fmt.Errorf("reading tags of queue %s: %w", url, err)
	}
	v, ok := out.Tags[tags.Stack]
	return owner{stack: v, tagged: ok}, nil
}

func (t stackTagger) bucketTags(ctx context.Context, name string) ([]s3types.Tag, error) {
	out, err := t.c.S3.GetBucketTagging(ctx, &s3.GetBucketTaggingInput{Bucket: aws.String(name)})
	if awsx.ErrorCode(err) == "NoSuchTagSet" {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading tags of bucket %s: %w", name, err)
	}
	return out.TagSet, nil
}

func (t stackTagger) bucketOwner(ctx context.Context, name string) (owner, error) {
	set, err := t.bucketTags(ctx, name)
	if err != nil {
		return owner{}, err
	}
	for _, tg := range set {
		if aws.ToString(tg.Key) == tags.Stack {
			return owner{stack: aws.ToString(tg.Value), tagged: true}, nil
		}
	}
	return owner{}, nil
}

// claim checks an existing resource's owner: this stack's (nothing to report), untagged
// (tagged now with tag, then read again, and reported unless quiet), or another stack's (an
// error: Up never takes over what another stack owns).
func (t stackTagger) claim(r *Report, kind Kind, name string, quiet bool, read func() (owner, error), tag func() error) error {
	o, err := read()
	if err != nil {
		return err
	}
	switch {
	case o.tagged && o.stack == t.stack:
		return nil
	case o.tagged:
		return fmt.Errorf("%s %s belongs to another stack (%s), not %s", kind, name, o, t.stack)
	}
	tagErr := tag()
	// kumo applies SNS TagResource but answers with an empty body the SDK cannot read: the
	// tag read back is what counts.
	if o, err := read(); err != nil || !o.tagged || o.stack != t.stack {
		if tagErr == nil {
			tagErr = fmt.Errorf("tag not there after tagging (%s)", o)
		}
		return fmt.Errorf("tagging %s %s with %s=%s: %w", kind, name, tags.Stack, t.stack, tagErr)
	}
	if !quiet {
		r.add(Updated, KindStackTag, name, fmt.Sprintf("%s: was untagged, now %s=%s", kind, tags.Stack, t.stack))
	}
	return nil
}

func (t stackTagger) claimTopic(ctx context.Context, r *Report, name, arn string) error {
	return t.claim(r, KindTopic, name, false, func() (owner, error) { return t.topicOwner(ctx, arn) }, func() error {
		_, err := t.c.SNS.TagResource(ctx, &sns.TagResourceInput{ResourceArn: aws.String(arn), Tags: t.snsTags()})
		return err
	})
}

func (t stackTagger) claimQueue(ctx context.Context, r *Report, kind Kind, name, url string) error {
	return t.claim(r, kind, name, false, func() (owner, error) { return t.queueOwner(ctx, url) }, func() error {
		_, err := t.c.SQS.TagQueue(ctx, &sqs.TagQueueInput{QueueUrl: aws.String(url), Tags: t.sqsTags()})
		return err
	})
}

// claimBucket tags a bucket (keeping its other tags: PutBucketTagging replaces the set);
// one just created (S3 takes no tags in CreateBucket) is tagged without a report line.
func (t stackTagger) claimBucket(ctx context.Context, r *Report, name string, created bool) error {
	return t.claim(r, KindBucket, name, created, func() (owner, error) { return t.bucketOwner(ctx, name) }, func() error {
		set, err := t.bucketTags(ctx, name)
		if err != nil {
			return err
		}
		set = append(set, s3types.Tag{Key: aws.String(tags.Stack), Value: aws.String(t.stack)})
		_, err = t.c.S3.PutBucketTagging(ctx, &s3.PutBucketTaggingInput{Bucket: aws.String(name), Tagging: &s3types.Tagging{TagSet: set}})
		return err
	})
}

func (t stackTagger) snsTags() []snstypes.Tag {
	return []snstypes.Tag{{Key: aws.String(tags.Stack), Value: aws.String(t.stack)}}
}

func (t stackTagger) sqsTags() map[string]string { return map[string]string{tags.Stack: t.stack} }

// ours says whether Down may delete a resource: only when it carries this stack's tag.
// Otherwise it adds a Kept line saying why.
func (t stackTagger) ours(r *Report, kind Kind, name string, read func() (owner, error)) (bool, error) {
	o, err := read()
	if err != nil {
		return false, err
	}
	if o.tagged && o.stack == t.stack {
		return true, nil
	}
	r.add(Kept, kind, name, fmt.Sprintf("%s, not %s=%s: not this stack's", o, tags.Stack, t.stack))
	return false, nil
}
