package awsx_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/smithy-go"
	"github.com/sivchari/kumo"

	"github.com/sortie-fleet/sortie/pkg/awsx"
)

type class int

const (
	none class = iota
	throttle
	capacity
	notFound
	permanent
)

func (c class) String() string {
	return [...]string{"none", "throttle", "capacity", "notFound", "permanent"}[c]
}

// classify runs every classifier and fails unless at most one says yes.
func classify(t *testing.T, err error) class {
	t.Helper()
	got := none
	n := 0
	for c, f := range map[class]func(error) bool{
		throttle: awsx.IsThrottle, capacity: awsx.IsCapacity, notFound: awsx.IsNotFound, permanent: awsx.IsPermanent,
	} {
		if f(err) {
			got = c
			n++
		}
	}
	if n > 1 {
		t.Fatalf("%v is in %d classes, want at most one", err, n)
	}
	return got
}

var codeCases = []struct {
	code string
	want class
}{
	{"Throttling", throttle},
	{"ThrottlingException", throttle},
	{"RequestLimitExceeded", throttle},
	{"RequestThrottled", throttle},
	{"TooManyRequestsException", throttle},
	{"SlowDown", throttle},
	{"ProvisionedThroughputExceededException", throttle},
	{"RequestThrottledException", throttle},
	{"PriorRequestNotComplete", throttle},
	{"EC2ThrottledException", throttle},

	{"InsufficientInstanceCapacity", capacity},
	{"InsufficientHostCapacity", capacity},
	{"InsufficientReservedInstanceCapacity", capacity},
	{"InsufficientCapacity", capacity},
	{"InstanceLimitExceeded", capacity},
	{"MaxSpotInstanceCountExceeded", capacity},
	{"Unsupported", capacity},

	{"InvalidInstanceID.NotFound", notFound},
	{"InvalidKeyPair.NotFound", notFound},
	{"AWS.SimpleQueueService.NonExistentQueue", notFound},
	{"QueueDoesNotExist", notFound},
	{"NoSuchKey", notFound},
	{"NoSuchBucket", notFound},
	{"NotFound", notFound},
	{"NotFoundException", notFound},
	{"ParameterNotFound", notFound},
	{"ResourceNotFoundException", notFound},
	{"InvalidGroup.NotFound", notFound},
	{"InvalidSubnetID.NotFound", notFound},
	{"InvalidAMIID.NotFound", notFound},

	{"InvalidParameterValue", permanent},
	{"InvalidParameter", permanent},
	{"InvalidParameterCombination", permanent},
	{"ValidationError", permanent},
	{"ValidationException", permanent},
	{"MissingParameter", permanent},
	{"UnauthorizedOperation", permanent},
	{"AccessDenied", permanent},
	{"AccessDeniedException", permanent},
	{"AuthFailure", permanent},
	{"InvalidClientTokenId", permanent},
	{"IdempotentParameterMismatch", permanent},
	{"InvalidInstanceID.Malformed", permanent},
	{"MalformedPolicyDocument", permanent},
	{"InvalidAddress", permanent},

	// Transient and unknown codes are in no class; 5xx codes are never permanent.
	{"InternalError", none},
	{"InternalFailure", none},
	{"ServiceUnavailable", none},
	{"RequestTimeout", none},
	{"ExpiredToken", none},
	{"SomethingNew", none},
	{"", none},
	// Codes are case sensitive, as the services send them.
	{"throttling", none},
}

func TestClassifyByCode(t *testing.T) {
	for _, tc := range codeCases {
		api := &smithy.GenericAPIError{Code: tc.code, Message: "m"}
		wraps := map[string]error{
			"bare":         api,
			"wrapped":      fmt.Errorf("launching fleet f-1: %w", api),
			"wrappedTwice": fmt.Errorf("outer: %w", fmt.Errorf("inner: %w", api)),
			"joined":       errors.Join(errors.New("other"), api),
			"operation": &smithy.OperationError{
				ServiceID: "EC2", OperationName: "RunInstances", Err: api,
			},
			"retriesExhausted": fmt.Errorf("x: %w", &retry.MaxAttemptsError{Attempt: 3, Err: api}),
		}
		for name, err := range wraps {
			t.Run(tc.code+"/"+name, func(t *testing.T) {
				if got := classify(t, err); got != tc.want {
					t.Errorf("class of %v = %v, want %v", err, got, tc.want)
				}
				if got := awsx.ErrorCode(err); got != tc.code {
					t.Errorf("ErrorCode = %q, want %q", got, tc.code)
				}
			})
		}
	}
}

func TestClassifyWithoutAPIError(t *testing.T) {
	quota := ratelimit.QuotaExceededError{Available: 0, Requested: 5}
	cases := []struct {
		name string
		err  error
		want class
	}{
		{"nil", nil, none},
		{"plain", errors.New("boom"), none},
		{"canceled", context.Canceled, none},
		{"retryQuota", quota, throttle},
		{"retryQuotaWrapped", fmt.Errorf("sending: %w", quota), throttle},
		{"retryQuotaPointer", fmt.Errorf("sending: %w", &quota), throttle},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := classify(t, tc.err); got != tc.want {
				t.Errorf("class of %v = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// TestClassifyRealErrors classifies errors the SDK returns from kumo's real handlers.
func TestClassifyRealErrors(t *testing.T) {
	srv := kumo.NewServer()
	defer srv.Close()
	cfg := awsx.ForEndpoint(srv.URL)
	ctx := context.Background()
	sqsc := sqs.NewFromConfig(cfg)
	s3c := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
	snsc := sns.NewFromConfig(cfg)

	// Unique: kumo's state is global to the process and outlives a repeated run (-count).
	bucket := fmt.Sprintf("awsx-errors-%d", time.Now().UnixNano())
	if _, err := s3c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatalf("creating bucket: %v", err)
	}

	cases := []struct {
		name string
		call func() error
		want class
	}{
		{"sqsGetQueueUrlMissing", func() error {
			_, err := sqsc.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String("awsx-missing-queue")})
			return err
		}, notFound},
		{"sqsSendToMissingQueue", func() error {
			_, err := sqsc.SendMessage(ctx, &sqs.SendMessageInput{
				QueueUrl:    aws.String(srv.URL + "/000000000000/awsx-missing-queue"),
				MessageBody: aws.String("x"),
			})
			return err
		}, notFound},
		{"s3GetMissingKey", func() error {
			_, err := s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("nope")})
			return err
		}, notFound},
		{"s3GetMissingBucket", func() error {
			_, err := s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("awsx-no-such-bucket"), Key: aws.String("k")})
			return err
		}, notFound},
		{"snsPublishMissingTopic", func() error {
			_, err := snsc.Publish(ctx, &sns.PublishInput{
				TopicArn: aws.String("arn:aws:sns:us-east-1:000000000000:awsx-missing-topic"),
				Message:  aws.String("x"),
			})
			return err
		}, notFound},
		{"sqsReceiveBadWaitTime", func() error {
			out, err := sqsc.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String("awsx-errors-q")})
			if err != nil {
				return fmt.Errorf("creating queue: %w", err)
			}
			_, err = sqsc.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: out.QueueUrl, WaitTimeSeconds: 21})
			return err
		}, permanent},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if err == nil {
				t.Fatal("call succeeded, want an error")
			}
			wrapped := fmt.Errorf("doing %s: %w", tc.name, err)
			if got := classify(t, wrapped); got != tc.want {
				t.Errorf("class of %v (code %q) = %v, want %v", err, awsx.ErrorCode(err), got, tc.want)
			}
		})
	}
}
