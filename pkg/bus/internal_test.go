package bus

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/sortie-fleet/sortie/pkg/events"
)

func TestPlanTimer(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		name        string
		delay       time.Duration
		maxDelay    time.Duration
		wantSeconds int32
		wantChained bool
	}{
		{"due", 0, maxSQSDelay, 0, false},
		{"overdue", -time.Minute, maxSQSDelay, 0, false},
		{"subSecondRoundsUp", 300 * time.Millisecond, maxSQSDelay, 1, false},
		{"thirtySeconds", 30 * time.Second, maxSQSDelay, 30, false},
		{"fractionRoundsUp", 30*time.Second + time.Millisecond, maxSQSDelay, 31, false},
		{"exactlyMax", 900 * time.Second, maxSQSDelay, 900, false},
		{"justOverMaxAfterRounding", 900*time.Second + 400*time.Millisecond, maxSQSDelay, 900, true},
		{"thousandSeconds", 1000 * time.Second, maxSQSDelay, 900, true},
		{"twoHours", 2 * time.Hour, maxSQSDelay, 900, true},
		{"shortKnob", 2500 * time.Millisecond, time.Second, 1, true},
		{"shortKnobLastHop", 500 * time.Millisecond, time.Second, 1, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			secs, chained := planTimer(now, now.Add(tc.delay), tc.maxDelay)
			if secs != tc.wantSeconds || chained != tc.wantChained {
				t.Errorf("planTimer(+%s, max %s) = %d, %v; want %d, %v", tc.delay, tc.maxDelay, secs, chained, tc.wantSeconds, tc.wantChained)
			}
		})
	}
}

// TestPlanTimerChainReachesDue walks a 1000 s timer hop by hop as the router would: it
// takes two hops, and the last one lands no earlier than the due time.
func TestPlanTimerChainReachesDue(t *testing.T) {
	start := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	due := start.Add(1000 * time.Second)
	now := start
	var hops []int32
	for range 10 {
		secs, _ := planTimer(now, due, maxSQSDelay)
		if secs == 0 {
			break
		}
		hops = append(hops, secs)
		now = now.Add(time.Duration(secs) * time.Second)
	}
	if fmt.Sprint(hops) != "[900 100]" {
		t.Errorf("hops = %v, want [900 100]", hops)
	}
	if now.Before(due) {
		t.Errorf("last hop lands at %s, before the due time %s", now, due)
	}
}

func TestIsPermanent(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain", errors.New("timeout"), false},
		{"marked", Permanent(errors.New("bad")), true},
		{"markedWrapped", fmt.Errorf("handling: %w", Permanent(errors.New("bad"))), true},
		{"invalidEvent", fmt.Errorf("decoding JobSubmitted: %w", events.ErrInvalid), true},
		{"fieldError", &events.FieldError{Field: "job_id", Reason: "missing"}, true},
		{"joined", errors.Join(errors.New("x"), Permanent(errors.New("bad"))), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsPermanent(tc.err); got != tc.want {
				t.Errorf("IsPermanent(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
	if Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
}

func TestDLQMarshaler(t *testing.T) {
	msg := message.NewMessage("uuid-1", []byte(`{"job_id":"j"}`))
	msg.Metadata.Set(AttrEventType, "JobSubmitted")
	msg.Metadata.Set(AttrJobID, "j")
	msg.Metadata.Set("Subject", "") // kumo's SNS deliveries carry an empty Subject
	msg.Metadata.Set(middleware.ReasonForPoisonedKey, "decoding: "+strings.Repeat("é", 2000))
	msg.Metadata.Set(middleware.PoisonedTopicKey, "p-planner-job-submitted")
	msg.Metadata.Set(middleware.PoisonedHandlerKey, "h")
	msg.Metadata.Set(middleware.PoisonedSubscriberKey, "s")

	out, err := dlqMarshaler{}.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(out.Body) != `{"job_id":"j"}` {
		t.Errorf("body = %q, want it unchanged", aws.ToString(out.Body))
	}
	got := map[string]string{}
	for k, v := range out.MessageAttributes {
		got[k] = aws.ToString(v.StringValue)
	}
	reason := got[AttrError]
	if !strings.HasPrefix(reason, "decoding: éé") || len(reason) > maxReasonBytes || !utf8.ValidString(reason) {
		t.Errorf("%s = %.40q… (%d bytes), want the reason cut to at most %d bytes of valid UTF-8", AttrError, reason, len(reason), maxReasonBytes)
	}
	delete(got, AttrError)
	want := map[string]string{
		AttrEventType:             "JobSubmitted",
		AttrJobID:                 "j",
		AttrSourceQueue:           "p-planner-job-submitted",
		"_watermill_message_uuid": "uuid-1",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("attributes = %v, want %v", got, want)
	}
}

func TestHeaderIDs(t *testing.T) {
	cases := []struct{ body, job, corr string }{
		{`{"schema_version":1,"job_id":"job-1","correlation_id":"c-1"}`, "job-1", "c-1"},
		{`{"job_id":"job-2"}`, "job-2", ""},
		{`not json`, "", ""},
		{`{"job_id":5}`, "", ""},
		{``, "", ""},
	}
	for _, tc := range cases {
		job, corr := headerIDs([]byte(tc.body))
		if job != tc.job || corr != tc.corr {
			t.Errorf("headerIDs(%q) = %q, %q; want %q, %q", tc.body, job, corr, tc.job, tc.corr)
		}
	}
}
