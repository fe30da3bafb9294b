package infra

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
)

// Queue settings, the same in deployments/terraform/main.tf.
const (
	queueVisibilityTimeout = 60      // seconds a received message stays hidden from other consumers
	queueRetention         = 345600  // 4 days
	dlqRetention           = 1209600 // 14 days, the maximum: time to look at what failed
	receiveWaitTime        = 20      // long polling
)

// UpOptions tune Up.
type UpOptions struct {
	// KMSKeyID is the KMS key (ARN, id or alias) of the log bucket's default encryption.
	// Empty means the AWS managed key aws/s3, and then any aws:kms key already configured
	// (say, the one deployments/terraform created) counts as correct and is kept.
	KMSKeyID string
	// VisibilityTimeout overrides the consuming and timer queues' visibility timeout
	// (default 60 s; whole seconds). Tests shorten it so that a crashed handler's message
	// comes back quickly; the ledger's claim lease must stay below two thirds of it.
	VisibilityTimeout time.Duration
}

// Up creates every topic, queue, DLQ, subscription, the EC2 notices' rule and queue, the
// ledger table and the buckets of topo, and corrects the settings of those that exist:
// running it twice changes nothing the second time. The report lists what it did so far
// even when it returns an error.
func Up(ctx context.Context, c Clients, topo bus.Topology, opts ...UpOptions) (Report, error) {
	if len(opts) > 1 {
		return Report{}, errors.New("more than one UpOptions")
	}
	u := upper{c: c, tagger: stackTagger{c: c, stack: topo.Prefix}}
	if len(opts) == 1 {
		u.o = opts[0]
	}
	if err := topo.Validate(); err != nil {
		return Report{}, err
	}
	if err := u.run(ctx, topo); err != nil {
		return u.report, fmt.Errorf("stack %s: %w", topo.Prefix, err)
	}
	return u.report, nil
}

// visibility is the queues' visibility timeout in seconds.
func (u *upper) visibility() int {
	if v := int(u.o.VisibilityTimeout / time.Second); v > 0 {
		return v
	}
	return queueVisibilityTimeout
}

type upper struct {
	c      Clients
	o      UpOptions
	tagger stackTagger
	report Report
}

func (u *upper) run(ctx context.Context, topo bus.Topology) error {
	existing, err := listTopics(ctx, u.c.SNS)
	if err != nil {
		return err
	}
	topicARNs := make(map[string]string)
	for _, et := range bus.EventTypes {
		name := topo.TopicName(et)
		arn, created, err := u.ensureTopic(ctx, name, existing)
		if err != nil {
			return err
		}
		topicARNs[name] = arn
		if err := u.ensureTopicPolicy(ctx, topo, et, arn, created); err != nil {
			return err
		}
	}

	for _, s := range topo.Subscriptions() {
		topicARN := topicARNs[s.Topic]
		queueARN, err := u.ensureQueuePair(ctx, KindQueue, s.Queue, s.DLQ, func(queueARN string) ([]byte, error) {
			return QueuePolicy(queueARN, topicARN)
		})
		if err != nil {
			return err
		}
		if err := u.ensureSubscription(ctx, topicARN, s.Topic, queueARN, s.Queue); err != nil {
			return err
		}
	}

	for _, svc := range bus.TimerServices {
		q := topo.TimerQueueName(svc)
		if _, err := u.ensureQueuePair(ctx, KindTimerQueue, q, bus.DLQName(q), nil); err != nil {
			return err
		}
	}

	if err := u.ensureEC2Events(ctx, topo); err != nil {
		return err
	}

	if err := u.ensureTable(ctx, topo.LedgerTableName(), topo.Prefix); err != nil {
		return err
	}

	for _, b := range []string{topo.BucketName(), topo.SecretsBucketName()} {
		lines, err := SecureBucket(ctx, u.c.S3, u.c.Region, b, u.o.KMSKeyID)
		u.report.Lines = append(u.report.Lines, lines...)
		if err != nil {
			return err
		}
		created := slices.Contains(lines, Line{Action: Created, Kind: KindBucket, Name: b})
		if err := u.tagger.claimBucket(ctx, &u.report, b, created); err != nil {
			return err
		}
	}
	return nil
}

// listTopics maps the name of every topic in the account and region to its ARN.
func listTopics(ctx context.Context, api SNSAPI) (map[string]string, error) {
	out := make(map[string]string)
	p := sns.NewListTopicsPaginator(api, &sns.ListTopicsInput{})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing topics: %w", err)
		}
		for _, t := range page.Topics {
			arn := aws.ToString(t.TopicArn)
			out[arn[strings.LastIndex(arn, ":")+1:]] = arn
		}
	}
	return out, nil
}

// ensureTopic relies on CreateTopic being idempotent (same name, same ARN); existing only
// tells created from exists. A new topic is created with its stack tag; an existing one is
// claimed (AWS refuses CreateTopic with tags other than an existing topic's).
func (u *upper) ensureTopic(ctx context.Context, name string, existing map[string]string) (arn string, created bool, err error) {
	in := &sns.CreateTopicInput{Name: aws.String(name)}
	_, exists := existing[name]
	if !exists {
		in.Tags = u.tagger.snsTags()
	}
	out, err := u.c.SNS.CreateTopic(ctx, in)
	if err != nil {
		return "", false, fmt.Errorf("creating topic %s: %w", name, err)
	}
	arn = aws.ToString(out.TopicArn)
	if !exists {
		u.report.add(Created, KindTopic, name, "")
		return arn, true, nil
	}
	u.report.add(Exists, KindTopic, name, "")
	if err := u.tagger.claimTopic(ctx, &u.report, name, arn); err != nil {
		return "", false, err
	}
	return arn, false, nil
}

// ensureTopicPolicy gives the topic TopicPolicy (only its producers publish) unless it has
// it. The account is the topic ARN's.
func (u *upper) ensureTopicPolicy(ctx context.Context, topo bus.Topology, eventType, topicARN string, created bool) error {
	name := topo.TopicName(eventType)
	parts := strings.Split(topicARN, ":")
	if len(parts) != 6 || parts[4] == "" {
		return fmt.Errorf("topic %s: ARN %q names no account", name, topicARN)
	}
	policy, err := TopicPolicy(topo, eventType, parts[4])
	if err != nil {
		return err
	}
	action, detail := Created, ""
	if !created {
		out, err := u.c.SNS.GetTopicAttributes(ctx, &sns.GetTopicAttributesInput{TopicArn: aws.String(topicARN)})
		if err != nil {
			return fmt.Errorf("reading policy of topic %s: %w", name, err)
		}
		have := out.Attributes["Policy"]
		if sameJSON(have, string(policy)) {
			u.report.add(Exists, KindTopicPolicy, name, "")
			return nil
		}
		action, detail = Updated, "policy changed"
		if strings.Contains(have, "__default_policy_ID") {
			detail = "default policy replaced"
		}
	}
	if _, err := u.c.SNS.SetTopicAttributes(ctx, &sns.SetTopicAttributesInput{
		TopicArn: aws.String(topicARN), AttributeName: aws.String("Policy"), AttributeValue: aws.String(string(policy)),
	}); err != nil {
		return fmt.Errorf("setting policy of topic %s: %w", name, err)
	}
	u.report.add(action, KindTopicPolicy, name, detail)
	return nil
}

// ensureQueuePair makes the DLQ, then the queue redriving to it, with the queue policy
// policy makes of the queue's ARN (nil: none, as timer queues have). It returns the
// queue's ARN.
func (u *upper) ensureQueuePair(ctx context.Context, kind Kind, queue, dlq string, policy func(queueARN string) ([]byte, error)) (string, error) {
	dlqARN, err := u.ensureQueue(ctx, KindDLQ, dlq, u.dlqAttributes())
	if err != nil {
		return "", err
	}
	// Both queues live in one account and region, so the queue's ARN is the DLQ's with
	// the last field swapped: the policy can go into CreateQueue itself.
	queueARN := dlqARN[:strings.LastIndex(dlqARN, ":")+1] + queue
	attrs, err := u.queueAttributes(dlqARN, queueARN, policy)
	if err != nil {
		return "", err
	}
	got, err := u.ensureQueue(ctx, kind, queue, attrs)
	if err != nil {
		return "", err
	}
	if got != queueARN {
		return "", fmt.Errorf("queue %s has ARN %s, its policy names %s", queue, got, queueARN)
	}
	return got, nil
}

func (u *upper) dlqAttributes() map[string]string {
	return map[string]string{
		string(sqstypes.QueueAttributeNameVisibilityTimeout):             strconv.Itoa(u.visibility()),
		string(sqstypes.QueueAttributeNameMessageRetentionPeriod):        strconv.Itoa(dlqRetention),
		string(sqstypes.QueueAttributeNameReceiveMessageWaitTimeSeconds): strconv.Itoa(receiveWaitTime),
	}
}

// queueAttributes are a consuming queue's attributes; a nil policy (timer queues) means no
// queue policy.
func (u *upper) queueAttributes(dlqARN, queueARN string, policy func(queueARN string) ([]byte, error)) (map[string]string, error) {
	redrive, err := RedrivePolicy(dlqARN, bus.MaxReceiveCount)
	if err != nil {
		return nil, err
	}
	attrs := map[string]string{
		string(sqstypes.QueueAttributeNameVisibilityTimeout):             strconv.Itoa(u.visibility()),
		string(sqstypes.QueueAttributeNameMessageRetentionPeriod):        strconv.Itoa(queueRetention),
		string(sqstypes.QueueAttributeNameReceiveMessageWaitTimeSeconds): strconv.Itoa(receiveWaitTime),
		string(sqstypes.QueueAttributeNameRedrivePolicy):                 string(redrive),
	}
	if policy != nil {
		p, err := policy(queueARN)
		if err != nil {
			return nil, err
		}
		attrs[string(sqstypes.QueueAttributeNamePolicy)] = string(p)
	}
	return attrs, nil
}

// jsonAttributes are compared by meaning, not by bytes.
var jsonAttributes = map[string]bool{
	string(sqstypes.QueueAttributeNamePolicy):        true,
	string(sqstypes.QueueAttributeNameRedrivePolicy): true,
}

// ensureQueue creates the queue with want, or sets the attributes of an existing one that
// differ from want. It returns the queue's ARN.
//
// It asks GetQueueUrl first: AWS's CreateQueue fails on an existing queue whose attributes
// differ (QueueAlreadyExists), and kumo's silently returns the queue without applying them.
func (u *upper) ensureQueue(ctx context.Context, kind Kind, name string, want map[string]string) (string, error) {
	url, err := queueURL(ctx, u.c.SQS, name)
	if err != nil {
		return "", err
	}
	if url == "" {
		out, err := u.c.SQS.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name), Attributes: want, Tags: u.tagger.sqsTags()})
		switch {
		case err == nil:
			attrs, err := queueAttrs(ctx, u.c.SQS, name, aws.ToString(out.QueueUrl), nil)
			if err != nil {
				return "", err
			}
			u.report.add(Created, kind, name, "")
			return attrs[string(sqstypes.QueueAttributeNameQueueArn)], nil
		case isQueueExists(err): // created meanwhile, by someone else: reconcile it below
			if url, err = queueURL(ctx, u.c.SQS, name); err != nil {
				return "", err
			}
			if url == "" {
				return "", fmt.Errorf("creating queue %s: exists, yet GetQueueUrl does not find it", name)
			}
		default:
			return "", fmt.Errorf("creating queue %s: %w", name, err)
		}
	}

	if err := u.tagger.claimQueue(ctx, &u.report, kind, name, url); err != nil {
		return "", err
	}
	have, err := queueAttrs(ctx, u.c.SQS, name, url, want)
	if err != nil {
		return "", err
	}
	drift := make(map[string]string)
	var details []string
	for _, k := range sortedKeys(want) {
		w, h := want[k], have[k]
		switch {
		case w == h, jsonAttributes[k] && sameJSON(w, h):
			continue
		case jsonAttributes[k]:
			details = append(details, k+" changed")
		default:
			details = append(details, fmt.Sprintf("%s %s→%s", k, orNone(h), w))
		}
		drift[k] = w
	}
	arn := have[string(sqstypes.QueueAttributeNameQueueArn)]
	if len(drift) == 0 {
		u.report.add(Exists, kind, name, "")
		return arn, nil
	}
	if _, err := u.c.SQS.SetQueueAttributes(ctx, &sqs.SetQueueAttributesInput{QueueUrl: aws.String(url), Attributes: drift}); err != nil {
		return "", fmt.Errorf("updating queue %s: %w", name, err)
	}
	u.report.add(Updated, kind, name, strings.Join(details, "; "))
	return arn, nil
}

// queueURL returns "" for a queue that does not exist.
func queueURL(ctx context.Context, api SQSAPI, name string) (string, error) {
	out, err := api.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(name)})
	if awsx.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("looking up queue %s: %w", name, err)
	}
	return aws.ToString(out.QueueUrl), nil
}

// queueAttrs reads the QueueArn and the attributes named in want.
func queueAttrs(ctx context.Context, api SQSAPI, name, url string, want map[string]string) (map[string]string, error) {
	names := []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}
	for _, k := range sortedKeys(want) {
		names = append(names, sqstypes.QueueAttributeName(k))
	}
	out, err := api.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: aws.String(url), AttributeNames: names})
	if err != nil {
		return nil, fmt.Errorf("reading attributes of queue %s: %w", name, err)
	}
	if out.Attributes[string(sqstypes.QueueAttributeNameQueueArn)] == "" {
		return nil, fmt.Errorf("reading attributes of queue %s: no QueueArn", name)
	}
	return out.Attributes, nil
}

// ensureSubscription subscribes the queue to the topic with raw delivery, unless it already
// is. Subscribe itself is idempotent on AWS but not on every emulator, and would not say
// whether the subscription existed, so the topic's subscriptions are listed first.
func (u *upper) ensureSubscription(ctx context.Context, topicARN, topic, queueARN, queue string) error {
	name := topic + " -> " + queue
	subs, err := listSubscriptions(ctx, u.c.SNS, topicARN)
	if err != nil {
		return err
	}
	for _, s := range subs {
		if aws.ToString(s.Protocol) != "sqs" || aws.ToString(s.Endpoint) != queueARN {
			continue
		}
		arn := s.SubscriptionArn
		attrs, err := u.c.SNS.GetSubscriptionAttributes(ctx, &sns.GetSubscriptionAttributesInput{SubscriptionArn: arn})
		if err != nil {
			return fmt.Errorf("reading subscription %s: %w", name, err)
		}
		if attrs.Attributes["RawMessageDelivery"] == "true" {
			u.report.add(Exists, KindSubscription, name, "")
			return nil
		}
		if _, err := u.c.SNS.SetSubscriptionAttributes(ctx, &sns.SetSubscriptionAttributesInput{
			SubscriptionArn: arn, AttributeName: aws.String("RawMessageDelivery"), AttributeValue: aws.String("true"),
		}); err != nil {
			return fmt.Errorf("updating subscription %s: %w", name, err)
		}
		u.report.add(Updated, KindSubscription, name, "RawMessageDelivery "+orNone(attrs.Attributes["RawMessageDelivery"])+"→true")
		return nil
	}
	if _, err := u.c.SNS.Subscribe(ctx, &sns.SubscribeInput{
		TopicArn:              aws.String(topicARN),
		Protocol:              aws.String("sqs"),
		Endpoint:              aws.String(queueARN),
		Attributes:            map[string]string{"RawMessageDelivery": "true"},
		ReturnSubscriptionArn: true,
	}); err != nil {
		return fmt.Errorf("subscribing %s: %w", name, err)
	}
	u.report.add(Created, KindSubscription, name, "")
	return nil
}

func listSubscriptions(ctx context.Context, api SNSAPI, topicARN string) ([]snstypes.Subscription, error) {
	var out []snstypes.Subscription
	p := sns.NewListSubscriptionsByTopicPaginator(api, &sns.ListSubscriptionsByTopicInput{TopicArn: aws.String(topicARN)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing subscriptions of %s: %w", topicARN, err)
		}
		out = append(out, page.Subscriptions...)
	}
	return out, nil
}

// SecureBucket creates bucket (in region; "" means us-east-1) unless it exists, and gives
// it what Sortie requires of every bucket it keeps data in: default SSE-KMS encryption with
// kmsKeyID (empty: the AWS managed key aws/s3, and then any aws:kms key already configured
// is kept), a public access block with all four settings on, and BucketPolicy (TLS only,
// uploads only with aws:kms). Each setting is put only when it differs, so running it again
// changes nothing. It returns one line per resource, those handled so far on an error.
// Up secures the log bucket with it; `sortie audit` checks what it sets.
func SecureBucket(ctx context.Context, api BucketAPI, region, bucket, kmsKeyID string) ([]Line, error) {
	if bucket == "" {
		return nil, errors.New("securing bucket: empty bucket name")
	}
	s := bucketSecurer{api: api, region: region, kmsKeyID: kmsKeyID}
	err := s.ensureBucket(ctx, bucket)
	return s.report.Lines, err
}

// bucketSecurer is SecureBucket's state: the clients, the wanted key, and what it did.
type bucketSecurer struct {
	api      BucketAPI
	region   string
	kmsKeyID string
	report   Report
}

// ensureBucket creates the bucket and sets its encryption, public access block and
// policy, each only when it differs from what is wanted.
func (b *bucketSecurer) ensureBucket(ctx context.Context, name string) error {
	created, err := b.createBucket(ctx, name)
	if err != nil {
		return err
	}
	enc := &s3types.ServerSideEncryptionConfiguration{Rules: []s3types.ServerSideEncryptionRule{{
		ApplyServerSideEncryptionByDefault: &s3types.ServerSideEncryptionByDefault{
			SSEAlgorithm: s3types.ServerSideEncryptionAwsKms,
		},
		BucketKeyEnabled: aws.Bool(true),
	}}}
	if b.kmsKeyID != "" {
		enc.Rules[0].ApplyServerSideEncryptionByDefault.KMSMasterKeyID = aws.String(b.kmsKeyID)
	}
	if err := b.ensureSetting(KindBucketEncryption, name, created, func() (string, error) {
		out, err := b.api.GetBucketEncryption(ctx, &s3.GetBucketEncryptionInput{Bucket: aws.String(name)})
		if err != nil {
			return "", err
		}
		return encryptionDrift(out.ServerSideEncryptionConfiguration, b.kmsKeyID), nil
	}, func() error {
		_, err := b.api.PutBucketEncryption(ctx, &s3.PutBucketEncryptionInput{Bucket: aws.String(name), ServerSideEncryptionConfiguration: enc})
		return err
	}); err != nil {
		return err
	}

	block := &s3types.PublicAccessBlockConfiguration{
		BlockPublicAcls: aws.Bool(true), IgnorePublicAcls: aws.Bool(true),
		BlockPublicPolicy: aws.Bool(true), RestrictPublicBuckets: aws.Bool(true),
	}
	if err := b.ensureSetting(KindPublicAccessBlock, name, created, func() (string, error) {
		out, err := b.api.GetPublicAccessBlock(ctx, &s3.GetPublicAccessBlockInput{Bucket: aws.String(name)})
		if err != nil {
			return "", err
		}
		return publicAccessDrift(out.PublicAccessBlockConfiguration), nil
	}, func() error {
		_, err := b.api.PutPublicAccessBlock(ctx, &s3.PutPublicAccessBlockInput{Bucket: aws.String(name), PublicAccessBlockConfiguration: block})
		return err
	}); err != nil {
		return err
	}

	policy, err := BucketPolicy(name)
	if err != nil {
		return err
	}
	return b.ensureSetting(KindBucketPolicy, name, created, func() (string, error) {
		out, err := b.api.GetBucketPolicy(ctx, &s3.GetBucketPolicyInput{Bucket: aws.String(name)})
		if err != nil {
			return "", err
		}
		if sameJSON(aws.ToString(out.Policy), string(policy)) {
			return "", nil
		}
		return "policy changed", nil
	}, func() error {
		_, err := b.api.PutBucketPolicy(ctx, &s3.PutBucketPolicyInput{Bucket: aws.String(name), Policy: aws.String(string(policy))})
		return err
	})
}

// createBucket reports whether it created the bucket (false: it was there already).
func (b *bucketSecurer) createBucket(ctx context.Context, name string) (bool, error) {
	_, err := b.api.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(name)})
	if err == nil {
		b.report.add(Exists, KindBucket, name, "")
		return false, nil
	}
	if !awsx.IsNotFound(err) {
		return false, fmt.Errorf("checking bucket %s: %w", name, err)
	}
	in := &s3.CreateBucketInput{Bucket: aws.String(name)}
	if b.region != "" && b.region != "us-east-1" {
		in.CreateBucketConfiguration = &s3types.CreateBucketConfiguration{LocationConstraint: s3types.BucketLocationConstraint(b.region)}
	}
	_, err = b.api.CreateBucket(ctx, in)
	if awsx.ErrorCode(err) == "BucketAlreadyOwnedByYou" {
		b.report.add(Exists, KindBucket, name, "")
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("creating bucket %s: %w", name, err)
	}
	b.report.add(Created, KindBucket, name, "")
	return true, nil
}

// ensureSetting puts one bucket setting unless drift (the reason it differs, "" when it
// does not) says it is in place. On a bucket just created it puts without asking.
func (b *bucketSecurer) ensureSetting(kind Kind, bucket string, created bool, drift func() (string, error), put func() error) error {
	action, detail := Created, ""
	if !created {
		d, err := drift()
		switch {
		case isUnset(err):
		case err != nil:
			return fmt.Errorf("reading %s of %s: %w", kind, bucket, err)
		case d == "":
			b.report.add(Exists, kind, bucket, "")
			return nil
		default:
			action, detail = Updated, d
		}
	}
	if err := put(); err != nil {
		return fmt.Errorf("setting %s of %s: %w", kind, bucket, err)
	}
	b.report.add(action, kind, bucket, detail)
	return nil
}

func encryptionDrift(cfg *s3types.ServerSideEncryptionConfiguration, keyID string) string {
	if cfg == nil || len(cfg.Rules) == 0 || cfg.Rules[0].ApplyServerSideEncryptionByDefault == nil {
		return "no default encryption"
	}
	r := cfg.Rules[0]
	d := r.ApplyServerSideEncryptionByDefault
	var out []string
	if d.SSEAlgorithm != s3types.ServerSideEncryptionAwsKms {
		out = append(out, fmt.Sprintf("SSEAlgorithm %s→%s", orNone(string(d.SSEAlgorithm)), s3types.ServerSideEncryptionAwsKms))
	}
	if keyID != "" && aws.ToString(d.KMSMasterKeyID) != keyID {
		out = append(out, fmt.Sprintf("KMSMasterKeyID %s→%s", orNone(aws.ToString(d.KMSMasterKeyID)), keyID))
	}
	if !aws.ToBool(r.BucketKeyEnabled) {
		out = append(out, "BucketKeyEnabled false→true")
	}
	return strings.Join(out, "; ")
}

func publicAccessDrift(cfg *s3types.PublicAccessBlockConfiguration) string {
	if cfg == nil {
		return "no public access block"
	}
	var off []string
	for _, f := range []struct {
		name string
		on   *bool
	}{
		{"BlockPublicAcls", cfg.BlockPublicAcls},
		{"IgnorePublicAcls", cfg.IgnorePublicAcls},
		{"BlockPublicPolicy", cfg.BlockPublicPolicy},
		{"RestrictPublicBuckets", cfg.RestrictPublicBuckets},
	} {
		if !aws.ToBool(f.on) {
			off = append(off, f.name)
		}
	}
	if len(off) == 0 {
		return ""
	}
	return strings.Join(off, ", ") + " off"
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
