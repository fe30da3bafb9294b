package events

import "time"

// JobSubmitted asks for work to be done by a fleet before a deadline. Upstream sends it;
// the planner consumes it.
type JobSubmitted struct {
	Header
	Template        string            `json:"template"` // ops-owned fleet template
	Profile         string            `json:"profile"`  // capacity profile used for sizing
	Recipe          string            `json:"recipe"`   // ops-owned bootstrap recipe
	Work            WorkSource        `json:"work"`
	DeadlineSeconds int               `json:"deadline_seconds"`
	Params          map[string]string `json:"params,omitempty"` // recipe parameters
	// BestEffort (optional, added in schema version 1): plan the job even when no fleet the
	// template allows can finish it in the time left; the planner plans the template's most
	// instances of the type that finishes soonest. Without it such a job is rejected.
	BestEffort bool `json:"best_effort,omitempty"`
}

// WorkSource says how much work there is: exactly one field is set.
type WorkSource struct {
	Count int       `json:"count,omitempty"` // an explicit number of items
	Queue string    `json:"queue,omitempty"` // an SQS queue name: its depth
	S3    *S3Prefix `json:"s3,omitempty"`    // an S3 prefix: its object count
}

// S3Prefix names the objects under a prefix of a bucket.
type S3Prefix struct {
	Bucket string `json:"bucket"`
	Prefix string `json:"prefix"`
}

var _ Event = JobSubmitted{}

// EventType returns TypeJobSubmitted.
func (JobSubmitted) EventType() string { return TypeJobSubmitted }

// Deadline returns the job's deadline as a duration from its submission time.
func (e JobSubmitted) Deadline() time.Duration { return time.Duration(e.DeadlineSeconds) * time.Second }

// Validate reports every invalid field; the errors wrap ErrInvalid.
func (e JobSubmitted) Validate() error {
	var c checker
	e.Header.check(&c)
	c.name("template", e.Template)
	c.name("profile", e.Profile)
	c.name("recipe", e.Recipe)
	e.Work.check(&c, "work")
	c.deadlineSeconds("deadline_seconds", e.DeadlineSeconds)
	c.params("params", e.Params)
	return c.err()
}

func (w WorkSource) check(c *checker, field string) {
	var set []string
	if w.Count != 0 {
		set = append(set, "count")
	}
	if w.Queue != "" {
		set = append(set, "queue")
	}
	if w.S3 != nil {
		set = append(set, "s3")
	}
	switch len(set) {
	case 0:
		c.fail(field, "must set exactly one of count, queue, s3, got none")
		return
	case 1:
	default:
		c.fail(field, "must set exactly one of count, queue, s3, got %d: %v", len(set), set)
		return
	}
	switch {
	case w.Count != 0:
		c.intRange(field+".count", int64(w.Count), 1, MaxItems)
	case w.Queue != "":
		c.match(field+".queue", w.Queue, queueRE, queuePattern)
	default:
		c.bucket(field+".s3.bucket", w.S3.Bucket)
		c.text(field+".s3.prefix", w.S3.Prefix, MaxS3KeyBytes, false)
	}
}

func (c *checker) deadlineSeconds(field string, n int) {
	c.intRange(field, int64(n), 1, int64(MaxDeadline/time.Second))
}
