package bus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/aws/smithy-go"
)

func TestExtension(t *testing.T) {
	cases := []struct {
		name                          string
		visibility, maxHandle, elapse time.Duration
		want                          int32
	}{
		{"firstBeat", 60 * time.Second, 15 * time.Minute, 20 * time.Second, 60},
		{"nearTheCap", 60 * time.Second, 15 * time.Minute, 14*time.Minute + 30*time.Second, 30},
		{"cutRoundsUp", 2 * time.Second, 3 * time.Second, 1500 * time.Millisecond, 2},
		{"lastSliver", 2 * time.Second, 3 * time.Second, 2900 * time.Millisecond, 1},
		{"atTheCap", 2 * time.Second, 3 * time.Second, 3 * time.Second, 0},
		{"pastTheCap", 60 * time.Second, 15 * time.Minute, time.Hour, 0},
		{"capShorterThanVisibility", 60 * time.Second, 3 * time.Second, time.Second, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := extension(tc.visibility, tc.maxHandle, tc.elapse); got != tc.want {
				t.Errorf("extension(%s, %s, %s) = %d, want %d", tc.visibility, tc.maxHandle, tc.elapse, got, tc.want)
			}
		})
	}
}

func TestNotInFlight(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"receiptHandleType", &sqstypes.ReceiptHandleIsInvalid{Message: aws.String("gone")}, true},
		{"notInflightType", fmt.Errorf("changing: %w", &sqstypes.MessageNotInflight{}), true},
		{"receiptHandleCode", &smithy.GenericAPIError{Code: "ReceiptHandleIsInvalid"}, true},
		{"legacyNotInflightCode", &smithy.GenericAPIError{Code: "AWS.SimpleQueueService.MessageNotInflight"}, true},
		{"throttled", &smithy.GenericAPIError{Code: "RequestThrottled"}, false},
		{"network", errors.New("dial tcp: connection refused"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := notInFlight(tc.err); got != tc.want {
				t.Errorf("notInFlight(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// fakeVisibility records ChangeMessageVisibility calls and answers each with err.
type fakeVisibility struct {
	err error

	mu    sync.Mutex
	calls []sqs.ChangeMessageVisibilityInput
}

var _ visibilityAPI = (*fakeVisibility)(nil)

func (f *fakeVisibility) ChangeMessageVisibility(_ context.Context, in *sqs.ChangeMessageVisibilityInput, _ ...func(*sqs.Options)) (*sqs.ChangeMessageVisibilityOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, *in)
	if f.err != nil {
		return nil, f.err
	}
	return &sqs.ChangeMessageVisibilityOutput{}, nil
}

func (f *fakeVisibility) made() []sqs.ChangeMessageVisibilityInput {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sqs.ChangeMessageVisibilityInput(nil), f.calls...)
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the JSON log lines whose msg is msg.
func (b *lockedBuffer) lines(msg string) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range bytes.Split(b.buf.Bytes(), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(l, &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

const (
	msgRetrying    = "extending message visibility; trying again at the next heartbeat"
	msgGone        = "message no longer in flight: no longer extending its visibility"
	msgCapReached  = "message handled for longer than the maximum: no longer hiding it, SQS will deliver it again"
	heartbeatEvery = 10 * time.Millisecond
)

// TestHeartbeat runs a heartbeat against a fake SQS, beating every 10 ms.
func TestHeartbeat(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name        string
		err         error
		maxHandle   time.Duration
		stopsItself bool // the heartbeat ends without stop being called
		wantCalls   func(n int) bool
		wantLog     string // a warning logged at least once ("" none)
		logOnce     bool   // ... exactly once
		wantSecs    int32  // every extension's VisibilityTimeout
	}{
		{name: "extendsUntilStopped", maxHandle: time.Hour, wantCalls: func(n int) bool { return n >= 5 }, wantSecs: 2},
		{name: "transientErrorKeepsGoing", err: &smithy.GenericAPIError{Code: "RequestThrottled"}, maxHandle: time.Hour,
			wantCalls: func(n int) bool { return n >= 5 }, wantLog: msgRetrying, wantSecs: 2},
		{name: "receiptHandleInvalidStops", err: &sqstypes.ReceiptHandleIsInvalid{Message: aws.String("gone")}, maxHandle: time.Hour,
			stopsItself: true, wantCalls: func(n int) bool { return n == 1 }, wantLog: msgGone, logOnce: true},
		{name: "legacyNotInflightStops", err: &smithy.GenericAPIError{Code: "AWS.SimpleQueueService.MessageNotInflight"}, maxHandle: time.Hour,
			stopsItself: true, wantCalls: func(n int) bool { return n == 1 }, wantLog: msgGone, logOnce: true},
		{name: "capStops", maxHandle: 55 * time.Millisecond,
			// Within 55 ms of the receipt every extension is cut to the 1 s left (rounded up).
			stopsItself: true, wantCalls: func(n int) bool { return n <= 6 }, wantLog: msgCapReached, logOnce: true, wantSecs: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			api := &fakeVisibility{err: tc.err}
			var logs lockedBuffer
			logger := &atomic.Pointer[slog.Logger]{}
			logger.Store(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("job_id", "job-1", "correlation_id", "corr-1"))
			var live atomic.Int64
			hb := &heartbeat{
				api: api, url: "http://q", receipt: aws.String("rh-1"),
				visibility: 2 * time.Second, every: heartbeatEvery, maxHandle: tc.maxHandle,
				received: time.Now(), logger: logger, live: &live,
			}
			hb.start(context.Background())
			if live.Load() != 1 {
				t.Errorf("%d heartbeats live after start, want 1", live.Load())
			}
			select {
			case <-hb.done:
				if !tc.stopsItself {
					t.Fatal("heartbeat ended before it was stopped")
				}
			case <-time.After(300 * time.Millisecond):
				if tc.stopsItself {
					t.Fatal("heartbeat still running 300 ms in, want it to have stopped by itself")
				}
			}
			hb.stop()
			hb.stop() // a second stop is harmless
			if live.Load() != 0 {
				t.Errorf("%d heartbeats live after stop, want 0", live.Load())
			}
			calls := api.made()
			time.Sleep(5 * heartbeatEvery)
			if after := len(api.made()); after != len(calls) {
				t.Errorf("%d calls after stop, want none", after-len(calls))
			}
			if !tc.wantCalls(len(calls)) {
				t.Errorf("%d ChangeMessageVisibility calls: not what this case expects", len(calls))
			}
			for i, c := range calls {
				if aws.ToString(c.QueueUrl) != "http://q" || aws.ToString(c.ReceiptHandle) != "rh-1" || (tc.wantSecs != 0 && c.VisibilityTimeout != tc.wantSecs) {
					t.Errorf("call %d: url %q receipt %q visibility %d s; want http://q, rh-1, %d s", i, aws.ToString(c.QueueUrl), aws.ToString(c.ReceiptHandle), c.VisibilityTimeout, tc.wantSecs)
				}
			}
			if tc.wantLog == "" {
				return
			}
			lines := logs.lines(tc.wantLog)
			if len(lines) == 0 || (tc.logOnce && len(lines) != 1) {
				t.Fatalf("logged %q %d times", tc.wantLog, len(lines))
			}
			if l := lines[0]; l["level"] != "WARN" || l["job_id"] != "job-1" || l["correlation_id"] != "corr-1" {
				t.Errorf("log line %v, want a warning with the job and correlation ids", l)
			}
		})
	}
}

// TestHeartbeatStopsWithItsContext: cancelling the context it was started with (the
// subscriber's hard stop) ends the heartbeat.
func TestHeartbeatStopsWithItsContext(t *testing.T) {
	t.Parallel()
	api := &fakeVisibility{}
	logger := &atomic.Pointer[slog.Logger]{}
	logger.Store(slog.New(slog.DiscardHandler))
	hb := &heartbeat{api: api, url: "u", receipt: aws.String("r"), visibility: time.Second, every: heartbeatEvery,
		maxHandle: time.Hour, received: time.Now(), logger: logger}
	ctx, cancel := context.WithCancel(context.Background())
	hb.start(ctx)
	time.Sleep(5 * heartbeatEvery)
	cancel()
	select {
	case <-hb.done:
	case <-time.After(time.Second):
		t.Fatal("heartbeat still running after its context was cancelled")
	}
	if len(api.made()) == 0 {
		t.Error("no extension before the cancellation")
	}
}
