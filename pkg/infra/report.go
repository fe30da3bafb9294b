package infra

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Action is what Up or Down did to one resource.
type Action string

// Actions, in the order Report.String summarises them.
const (
	Created Action = "created" // did not exist; made
	Updated Action = "updated" // existed with other settings; corrected
	Exists  Action = "exists"  // existed as wanted; untouched
	Deleted Action = "deleted" // existed; removed
	Kept    Action = "kept"    // existed; deliberately not removed (see Detail)
	Absent  Action = "absent"  // did not exist; nothing to remove
)

var actionOrder = []Action{Created, Updated, Exists, Deleted, Kept, Absent}

// Kind is the sort of resource a report line is about.
type Kind string

// Kinds of resources.
const (
	KindTopic             Kind = "topic"
	KindTopicPolicy       Kind = "topic-policy"
	KindQueue             Kind = "queue"
	KindTimerQueue        Kind = "timer-queue"
	KindDLQ               Kind = "dlq"
	KindSubscription      Kind = "subscription"
	KindBucket            Kind = "bucket"
	KindBucketEncryption  Kind = "bucket-encryption"
	KindPublicAccessBlock Kind = "bucket-public-access-block"
	KindBucketPolicy      Kind = "bucket-policy"
	KindObjects           Kind = "objects"
	KindTable             Kind = "table"
	KindTableTTL          Kind = "table-ttl"
	KindEventsQueue       Kind = "events-queue" // the queue EventBridge delivers EC2's notices to
	KindRule              Kind = "event-rule"
	KindRuleTarget        Kind = "event-target"
)

// Line is one resource's outcome.
type Line struct {
	Action Action `json:"action"`
	Kind   Kind   `json:"kind"`
	Name   string `json:"name"`
	Detail string `json:"detail,omitempty"` // why, for updated and kept lines; empty otherwise
}

// Report lists one line per resource, in the order Up or Down handled them.
type Report struct {
	Lines []Line `json:"resources"`
}

func (r *Report) add(a Action, k Kind, name, detail string) {
	r.Lines = append(r.Lines, Line{Action: a, Kind: k, Name: name, Detail: detail})
}

// Count is the number of lines with action a.
func (r Report) Count(a Action) int {
	n := 0
	for _, l := range r.Lines {
		if l.Action == a {
			n++
		}
	}
	return n
}

// String renders the report for humans: aligned columns, then a summary line.
func (r Report) String() string {
	var wa, wk, wn int
	for _, l := range r.Lines {
		wa = max(wa, len(l.Action))
		wk = max(wk, len(l.Kind))
		wn = max(wn, len(l.Name))
	}
	var b strings.Builder
	for _, l := range r.Lines {
		line := fmt.Sprintf("%-*s  %-*s  %-*s  %s", wa, l.Action, wk, l.Kind, wn, l.Name, l.Detail)
		b.WriteString(strings.TrimRight(line, " "))
		b.WriteByte('\n')
	}
	var parts []string
	for _, a := range actionOrder {
		if n := r.Count(a); n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, a))
		}
	}
	fmt.Fprint(&b, plural(len(r.Lines), "resource"))
	if len(parts) > 0 {
		fmt.Fprintf(&b, ": %s", strings.Join(parts, ", "))
	}
	b.WriteByte('\n')
	return b.String()
}

// plural renders "1 object", "3 objects".
func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}
