package ec2events

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

var at = time.Date(2026, 12, 2, 16, 0, 0, 0, time.UTC)

// awsSpotWarning is the example AWS documents for the warning, as an SQS target receives it.
const awsSpotWarning = `{"version":"0","id":"12345678-1234-1234-1234-123456789012","detail-type":"EC2 Spot Instance Interruption Warning","source":"aws.ec2","account":"123456789012","time":"2026-12-02T16:00:00Z","region":"us-east-2","resources":["arn:aws:ec2:us-east-2a:instance/i-1234567890abcdef0"],"detail":{"instance-id":"i-1234567890abcdef0","instance-action":"terminate"}}`

func TestParse(t *testing.T) {
	w := Where{Region: "us-east-1", Account: "000000000000"}
	enc := func(e Envelope) string {
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	tests := []struct {
		name    string
		body    string
		want    Notice
		lost    bool
		wantErr string
		notEC2  bool
	}{
		{name: "aws example warning", body: awsSpotWarning, lost: true,
			want: Notice{Kind: KindSpotWarning, InstanceID: "i-1234567890abcdef0", Action: "terminate", Time: at}},
		{name: "built warning", body: enc(SpotWarning(w, "e1", "i-0abc12345678", at)), lost: true,
			want: Notice{Kind: KindSpotWarning, InstanceID: "i-0abc12345678", Action: "terminate", Time: at}},
		{name: "terminated", body: enc(StateChange(w, "e2", "i-0abc12345678", "terminated", at)), lost: true,
			want: Notice{Kind: KindStateChange, InstanceID: "i-0abc12345678", State: "terminated", Time: at}},
		{name: "running is not lost", body: enc(StateChange(w, "e3", "i-0abc12345678", "running", at)),
			want: Notice{Kind: KindStateChange, InstanceID: "i-0abc12345678", State: "running", Time: at}},
		{name: "other source", body: `{"source":"aws.s3","detail-type":"Object Created","time":"2026-12-02T16:00:00Z","detail":{}}`, wantErr: "source", notEC2: true},
		{name: "other detail type", body: `{"source":"aws.ec2","detail-type":"EBS Snapshot Notification","time":"2026-12-02T16:00:00Z","detail":{}}`, wantErr: "detail-type", notEC2: true},
		{name: "not json", body: `hello`, wantErr: "not an EventBridge envelope"},
		{name: "bad instance id", body: strings.Replace(awsSpotWarning, "i-1234567890abcdef0\",\"instance-action", "i-1;reboot\",\"instance-action", 1), wantErr: "not an instance id"},
		{name: "bad action", body: strings.Replace(awsSpotWarning, `"terminate"`, `"explode"`, 1), wantErr: "instance-action"},
		{name: "bad state", body: enc(StateChange(w, "e4", "i-0abc12345678", "melted", at)), wantErr: "state"},
		{name: "no time", body: strings.Replace(awsSpotWarning, `"time":"2026-12-02T16:00:00Z",`, "", 1), wantErr: "no time"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.body))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				if errors.Is(err, ErrNotEC2) != tt.notEC2 {
					t.Errorf("errors.Is(err, ErrNotEC2) = %v, want %v", !tt.notEC2, tt.notEC2)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("Parse = %+v, want %+v", got, tt.want)
			}
			if got.Lost() != tt.lost {
				t.Errorf("Lost() = %v, want %v", got.Lost(), tt.lost)
			}
		})
	}
}

func TestDeadline(t *testing.T) {
	n, err := Parse([]byte(awsSpotWarning))
	if err != nil {
		t.Fatal(err)
	}
	if got := n.Deadline(); !got.Equal(at.Add(2 * time.Minute)) {
		t.Errorf("Deadline = %v, want two minutes after the warning", got)
	}
	if !(Notice{Kind: KindStateChange, Time: at}).Deadline().IsZero() {
		t.Error("a state change has a deadline")
	}
}

func TestPatternMatchesBothDetailTypes(t *testing.T) {
	var p struct {
		Source     []string `json:"source"`
		DetailType []string `json:"detail-type"`
	}
	if err := json.Unmarshal([]byte(Pattern()), &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Source) != 1 || p.Source[0] != Source || len(p.DetailType) != 2 {
		t.Errorf("Pattern() = %s", Pattern())
	}
}
