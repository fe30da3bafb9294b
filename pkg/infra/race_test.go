package infra

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/smithy-go"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
)

// lateSQS plays AWS's side of a race kumo cannot: every queue seems missing at the first
// lookup (someone creates it just after), and CreateQueue on an existing queue fails with
// QueueAlreadyExists as on AWS, instead of kumo's silent success.
type lateSQS struct {
	SQSAPI
	mu     sync.Mutex
	looked map[string]bool
}

func (l *lateSQS) GetQueueUrl(ctx context.Context, in *sqs.GetQueueUrlInput, opts ...func(*sqs.Options)) (*sqs.GetQueueUrlOutput, error) {
	l.mu.Lock()
	first := !l.looked[*in.QueueName]
	l.looked[*in.QueueName] = true
	l.mu.Unlock()
	if first {
		return nil, &smithy.GenericAPIError{Code: "AWS.SimpleQueueService.NonExistentQueue"}
	}
	return l.SQSAPI.GetQueueUrl(ctx, in, opts...)
}

func (l *lateSQS) CreateQueue(ctx context.Context, in *sqs.CreateQueueInput, opts ...func(*sqs.Options)) (*sqs.CreateQueueOutput, error) {
	if _, err := l.SQSAPI.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: in.QueueName}); err == nil {
		return nil, fmt.Errorf("operation error SQS: CreateQueue: %w", &smithy.GenericAPIError{Code: "QueueAlreadyExists"})
	}
	return l.SQSAPI.CreateQueue(ctx, in, opts...)
}

// lateS3 says every bucket is missing, as a HeadBucket racing a CreateBucket would.
type lateS3 struct {
	S3API
	created []*s3.CreateBucketInput
}

func (l *lateS3) HeadBucket(context.Context, *s3.HeadBucketInput, ...func(*s3.Options)) (*s3.HeadBucketOutput, error) {
	return nil, &smithy.GenericAPIError{Code: "NotFound"}
}

func (l *lateS3) CreateBucket(ctx context.Context, in *s3.CreateBucketInput, opts ...func(*s3.Options)) (*s3.CreateBucketOutput, error) {
	l.created = append(l.created, in)
	return l.S3API.CreateBucket(ctx, in, opts...)
}

func TestUpReconcilesWhatAppearedMeanwhile(t *testing.T) {
	s := newStack(t)
	topo := bus.Topology{Prefix: uniquePrefix(t)}
	up(t, s, topo)
	drifted := topo.TimerQueueName(bus.Monitor)
	setQueueAttribute("VisibilityTimeout", "7")(t, s, drifted)

	c := s.c
	c.SQS = &lateSQS{SQSAPI: s.c.SQS, looked: make(map[string]bool)}
	ls3 := &lateS3{S3API: s.c.S3}
	c.S3 = ls3
	r, err := Up(context.Background(), c, topo)
	if err != nil {
		t.Fatalf("Up: %v\n%s", err, r)
	}
	if len(ls3.created) != 2 { // the log bucket and the secrets bucket, each once
		t.Errorf("CreateBucket called %d times, want 2", len(ls3.created))
	}
	for _, l := range r.Lines {
		want := Exists
		if l.Name == drifted {
			want = Updated
		}
		if l.Action != want {
			t.Errorf("%s %s: %s, want %s", l.Kind, l.Name, l.Action, want)
		}
	}
	wantQueueAttribute("VisibilityTimeout", "60")(t, s, drifted)
}

func TestUpCreatesBucketInItsRegion(t *testing.T) {
	tests := []struct {
		region string
		want   s3types.BucketLocationConstraint // "" for no CreateBucketConfiguration
	}{
		{"us-east-1", ""},
		{"", ""},
		{"eu-west-1", "eu-west-1"},
	}
	for _, tt := range tests {
		t.Run(tt.region, func(t *testing.T) {
			s := newStack(t)
			topo := bus.Topology{Prefix: uniquePrefix(t)}
			ls3 := &lateS3{S3API: s.c.S3}
			c := s.c
			c.S3, c.Region = ls3, tt.region
			if r, err := Up(context.Background(), c, topo); err != nil {
				t.Fatalf("Up: %v\n%s", err, r)
			}
			if len(ls3.created) != 2 {
				t.Fatalf("CreateBucket called %d times, want 2 (log and secrets buckets)", len(ls3.created))
			}
			for _, in := range ls3.created {
				var got s3types.BucketLocationConstraint
				if cfg := in.CreateBucketConfiguration; cfg != nil {
					got = cfg.LocationConstraint
				}
				if got != tt.want {
					t.Errorf("%s: LocationConstraint = %q, want %q", *in.Bucket, got, tt.want)
				}
			}
		})
	}
}

func TestUpKMSKey(t *testing.T) {
	ctx := context.Background()
	s := newStack(t)
	topo := bus.Topology{Prefix: uniquePrefix(t)}
	bucket := topo.BucketName()
	keyOf := func() string {
		t.Helper()
		out, err := s.s3.GetBucketEncryption(ctx, &s3.GetBucketEncryptionInput{Bucket: aws.String(bucket)})
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(out.ServerSideEncryptionConfiguration.Rules[0].ApplyServerSideEncryptionByDefault.KMSMasterKeyID)
	}
	encLine := func(r Report) Line {
		t.Helper()
		i := slices.IndexFunc(r.Lines, func(l Line) bool { return l.Kind == KindBucketEncryption })
		return r.Lines[i]
	}

	r, err := Up(ctx, s.c, topo, UpOptions{KMSKeyID: "alias/sortie-a"})
	if err != nil {
		t.Fatal(err)
	}
	if got := keyOf(); got != "alias/sortie-a" || encLine(r).Action != Created {
		t.Errorf("key %q, line %+v", got, encLine(r))
	}
	// Without a key of its own Up keeps whichever aws:kms key is configured.
	if r := up(t, s, topo); encLine(r).Action != Exists || keyOf() != "alias/sortie-a" {
		t.Errorf("up without a key: %+v, key %q", encLine(r), keyOf())
	}
	r, err = Up(ctx, s.c, topo, UpOptions{KMSKeyID: "alias/sortie-b"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Line{Updated, KindBucketEncryption, bucket, "KMSMasterKeyID alias/sortie-a→alias/sortie-b"}); encLine(r) != want || keyOf() != "alias/sortie-b" {
		t.Errorf("line %+v, want %+v; key %q", encLine(r), want, keyOf())
	}
}

func TestErrorClassification(t *testing.T) {
	wrap := func(code string) error {
		return fmt.Errorf("operation error: %w", &smithy.GenericAPIError{Code: code})
	}
	tests := []struct {
		err                           error
		notFound, unset, queueExisted bool
	}{
		{wrap("AWS.SimpleQueueService.NonExistentQueue"), true, false, false},
		{wrap("QueueDoesNotExist"), true, false, false},
		{wrap("NotFound"), true, false, false},
		{wrap("NoSuchBucket"), true, false, false},
		{wrap("NoSuchBucketPolicy"), false, true, false},
		{wrap("NoSuchPublicAccessBlockConfiguration"), false, true, false},
		{wrap("ServerSideEncryptionConfigurationNotFoundError"), false, true, false},
		{wrap("QueueAlreadyExists"), false, false, true},
		{wrap("QueueNameExists"), false, false, true},
		{wrap("AccessDenied"), false, false, false},
		{errors.New("NotFound"), false, false, false},
		{nil, false, false, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.err), func(t *testing.T) {
			if got := awsx.IsNotFound(tt.err); got != tt.notFound {
				t.Errorf("isNotFound = %v", got)
			}
			if got := isUnset(tt.err); got != tt.unset {
				t.Errorf("isUnset = %v", got)
			}
			if got := isQueueExists(tt.err); got != tt.queueExisted {
				t.Errorf("isQueueExists = %v", got)
			}
		})
	}
}
