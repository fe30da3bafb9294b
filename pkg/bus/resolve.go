package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	wmsns "github.com/ThreeDotsLabs/watermill-aws/sns"
	wmsqs "github.com/ThreeDotsLabs/watermill-aws/sqs"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/awsx"
)

// queueURLAPI is the SQS call the queue resolver makes.
type queueURLAPI interface {
	GetQueueUrl(ctx context.Context, params *sqs.GetQueueUrlInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueUrlOutput, error)
}

// queueResolver maps queue names to URLs with GetQueueUrl and caches them. A missing
// queue is a *MissingError whichever code the service used to say so (AWS's
// QueueDoesNotExist, or the legacy AWS.SimpleQueueService.NonExistentQueue kumo sends,
// which watermill-aws's own resolver does not recognise). Queue URLs are only ever
// passed as parameters: requests go to the client's endpoint, so kumo's URLs, which
// always name localhost:4566, work.
type queueResolver struct {
	api queueURLAPI

	mu   sync.Mutex
	urls map[string]string
}

func newQueueResolver(api queueURLAPI) *queueResolver {
	return &queueResolver{api: api, urls: map[string]string{}}
}

// url returns the URL of the named queue.
func (r *queueResolver) url(ctx context.Context, name string) (string, error) {
	r.mu.Lock()
	u, ok := r.urls[name]
	r.mu.Unlock()
	if ok {
		return u, nil
	}
	out, err := r.api.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(name)})
	if awsx.IsNotFound(err) {
		return "", &MissingError{Kind: "queue", Name: name}
	}
	if err != nil {
		return "", fmt.Errorf("resolving queue %s: %w", name, err)
	}
	u = aws.ToString(out.QueueUrl)
	if u == "" {
		return "", fmt.Errorf("resolving queue %s: empty queue URL", name)
	}
	r.mu.Lock()
	r.urls[name] = u
	r.mu.Unlock()
	return u, nil
}

var _ wmsqs.QueueUrlResolver = (*queueResolver)(nil)

// ResolveQueueUrl lets watermill-aws's SQS publisher use the resolver; params.Topic is
// the queue name.
func (r *queueResolver) ResolveQueueUrl(ctx context.Context, params wmsqs.ResolveQueueUrlParams) (wmsqs.QueueUrlResolverResult, error) {
	u, err := r.url(ctx, params.Topic)
	var missing *MissingError
	if errors.As(err, &missing) {
		exists := false
		return wmsqs.QueueUrlResolverResult{QueueName: wmsqs.QueueName(params.Topic), Exists: &exists}, nil
	}
	if err != nil {
		return wmsqs.QueueUrlResolverResult{}, err
	}
	exists := true
	qu := wmsqs.QueueURL(u)
	return wmsqs.QueueUrlResolverResult{QueueName: wmsqs.QueueName(params.Topic), QueueURL: &qu, Exists: &exists}, nil
}

// topicResolver maps topic names to ARNs by listing the account's topics (so the
// partition, region and account come from the service, not from guesses) and caches
// them. A topic that is not listed is a *MissingError; topics are never created.
type topicResolver struct {
	api sns.ListTopicsAPIClient

	mu   sync.Mutex
	arns map[string]string
}

func newTopicResolver(api sns.ListTopicsAPIClient) *topicResolver {
	return &topicResolver{api: api, arns: map[string]string{}}
}

var _ wmsns.TopicResolver = (*topicResolver)(nil)

// ResolveTopic returns the ARN of the named topic.
func (r *topicResolver) ResolveTopic(ctx context.Context, name string) (wmsns.TopicArn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if arn, ok := r.arns[name]; ok {
		return wmsns.TopicArn(arn), nil
	}
	// Not cached: list again, the topic may have been created since the last listing.
	pages := sns.NewListTopicsPaginator(r.api, &sns.ListTopicsInput{})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return "", fmt.Errorf("listing topics to resolve %s: %w", name, err)
		}
		for _, t := range page.Topics {
			arn := aws.ToString(t.TopicArn)
			if i := strings.LastIndexByte(arn, ':'); i >= 0 {
				r.arns[arn[i+1:]] = arn
			}
		}
	}
	if arn, ok := r.arns[name]; ok {
		return wmsns.TopicArn(arn), nil
	}
	return "", &MissingError{Kind: "topic", Name: name}
}
