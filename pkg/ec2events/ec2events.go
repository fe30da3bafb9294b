// Package ec2events reads and writes the notices EC2 sends through EventBridge: Spot Instance
// Interruption Warnings and instance state-change notifications, as an SQS target receives
// them (the EventBridge envelope as the message body). The monitor reads them; the local
// cloud writes them; `sortie infra up` and the Terraform route them with Pattern.
package ec2events

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// What EventBridge says of EC2's notices.
const (
	Source                = "aws.ec2"
	DetailTypeSpotWarning = "EC2 Spot Instance Interruption Warning"
	DetailTypeStateChange = "EC2 Instance State-change Notification"
)

// Notice kinds.
const (
	KindSpotWarning = "spot-interruption-warning"
	KindStateChange = "state-change"
)

// SpotNotice is how long EC2 gives a spot instance between the warning and its
// interruption.
const SpotNotice = 2 * time.Minute

// Envelope is an EventBridge event as delivered to an SQS target.
type Envelope struct {
	Version    string          `json:"version"`
	ID         string          `json:"id"`
	DetailType string          `json:"detail-type"`
	Source     string          `json:"source"`
	Account    string          `json:"account"`
	Time       time.Time       `json:"time"`
	Region     string          `json:"region"`
	Resources  []string        `json:"resources"`
	Detail     json.RawMessage `json:"detail"`
}

// Notice is what one envelope says about one instance.
type Notice struct {
	Kind       string
	InstanceID string
	// Action is a spot warning's instance-action: terminate, stop or hibernate.
	Action string
	// State is a state change's new state: pending, running, shutting-down, terminated,
	// stopping or stopped.
	State string
	Time  time.Time // when EventBridge says it happened
}

// Deadline is when a warned spot instance is interrupted: SpotNotice after the warning.
func (n Notice) Deadline() time.Time {
	if n.Kind != KindSpotWarning {
		return time.Time{}
	}
	return n.Time.Add(SpotNotice)
}

// Lost reports whether the notice means the instance is being taken away or is gone: a
// spot warning, or a state change to shutting-down, terminated, stopping or stopped.
func (n Notice) Lost() bool {
	switch n.Kind {
	case KindSpotWarning:
		return true
	case KindStateChange:
		switch n.State {
		case "shutting-down", "terminated", "stopping", "stopped":
			return true
		}
	}
	return false
}

// ErrNotEC2 marks a body that is an EventBridge event but not one of EC2's notices this
// package reads: a consumer drops it rather than retrying it.
var ErrNotEC2 = errors.New("not an EC2 interruption or state-change notice")

var (
	instanceIDRE = regexp.MustCompile(`^i-[0-9a-f]{8,17}$`)
	actions      = []string{"terminate", "stop", "hibernate"}
	states       = []string{"pending", "running", "shutting-down", "terminated", "stopping", "stopped"}
)

// maxBody bounds what Parse reads: EventBridge events are at most 256 KiB.
const maxBody = 256 << 10

// Parse reads one EventBridge envelope. Bodies that are not JSON envelopes, or EC2 notices
// whose detail is malformed, are errors; envelopes of other sources or detail types wrap
// ErrNotEC2.
func Parse(body []byte) (Notice, error) {
	if len(body) > maxBody {
		return Notice{}, fmt.Errorf("ec2 notice: body is %d bytes, more than an EventBridge event's %d", len(body), maxBody)
	}
	var env Envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return Notice{}, fmt.Errorf("ec2 notice: not an EventBridge envelope: %w", err)
	}
	if env.Source != Source {
		return Notice{}, fmt.Errorf("ec2 notice: source %q: %w", env.Source, ErrNotEC2)
	}
	n := Notice{Time: env.Time}
	var d struct {
		InstanceID     string `json:"instance-id"`
		InstanceAction string `json:"instance-action"`
		State          string `json:"state"`
	}
	if err := json.Unmarshal(env.Detail, &d); err != nil {
		return Notice{}, fmt.Errorf("ec2 notice: %s: detail: %w", env.DetailType, err)
	}
	switch env.DetailType {
	case DetailTypeSpotWarning:
		n.Kind, n.Action = KindSpotWarning, d.InstanceAction
		if !contains(actions, d.InstanceAction) {
			return Notice{}, fmt.Errorf("ec2 notice: %s: instance-action %q is not one of %s", env.DetailType, d.InstanceAction, strings.Join(actions, ", "))
		}
	case DetailTypeStateChange:
		n.Kind, n.State = KindStateChange, d.State
		if !contains(states, d.State) {
			return Notice{}, fmt.Errorf("ec2 notice: %s: state %q is not one of %s", env.DetailType, d.State, strings.Join(states, ", "))
		}
	default:
		return Notice{}, fmt.Errorf("ec2 notice: detail-type %q: %w", env.DetailType, ErrNotEC2)
	}
	if !instanceIDRE.MatchString(d.InstanceID) {
		return Notice{}, fmt.Errorf("ec2 notice: %s: instance-id %q is not an instance id", env.DetailType, d.InstanceID)
	}
	if env.Time.IsZero() {
		return Notice{}, fmt.Errorf("ec2 notice: %s: no time", env.DetailType)
	}
	n.InstanceID = d.InstanceID
	return n, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Where an event happened: its region and account, for the envelope and the instance's ARN.
type Where struct {
	Region  string
	Account string
}

// SpotWarning is the envelope of a Spot Instance Interruption Warning for id at at.
func SpotWarning(w Where, eventID, id string, at time.Time) Envelope {
	return w.envelope(eventID, DetailTypeSpotWarning, id, at, map[string]string{"instance-id": id, "instance-action": "terminate"})
}

// StateChange is the envelope of an instance state-change notification.
func StateChange(w Where, eventID, id, state string, at time.Time) Envelope {
	return w.envelope(eventID, DetailTypeStateChange, id, at, map[string]string{"instance-id": id, "state": state})
}

func (w Where) envelope(eventID, detailType, id string, at time.Time, detail map[string]string) Envelope {
	d, _ := json.Marshal(detail) // a map of strings always marshals
	return Envelope{
		Version: "0", ID: eventID, DetailType: detailType, Source: Source, Account: w.Account,
		Time: at.UTC().Truncate(time.Second), Region: w.Region,
		Resources: []string{fmt.Sprintf("arn:aws:ec2:%s:%s:instance/%s", w.Region, w.Account, id)},
		Detail:    d,
	}
}

// Pattern is the EventBridge event pattern of the stack's rule: every spot warning, and
// every state change that takes an instance away. Sortie's own terminations match too;
// the monitor ignores the instances of jobs that have finished.
func Pattern() string {
	p := map[string]any{
		"source":      []string{Source},
		"detail-type": []string{DetailTypeSpotWarning, DetailTypeStateChange},
	}
	b, _ := json.Marshal(p)
	return string(b)
}
