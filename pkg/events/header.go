package events

import (
	"errors"
	"time"
)

// SchemaVersion is the only schema version this build reads and writes.
const SchemaVersion = 1

// ErrInvalid is wrapped by every decoding and validation error: the input is permanently
// bad and must go to the dead-letter queue, never be retried.
var ErrInvalid = errors.New("invalid event")

// Header is carried by every event.
type Header struct {
	SchemaVersion int       `json:"schema_version"`
	JobID         string    `json:"job_id"`
	CorrelationID string    `json:"correlation_id"`
	Time          time.Time `json:"time"`
}

// NewHeader returns a header of the current schema version stamped with now in UTC
// (without its monotonic clock reading, so it survives a round trip unchanged).
func NewHeader(jobID, correlationID string, now time.Time) Header {
	return Header{SchemaVersion: SchemaVersion, JobID: jobID, CorrelationID: correlationID, Time: now.UTC()}
}

// IDs returns the job and correlation ids every log line and message carries.
func (h Header) IDs() (jobID, correlationID string) { return h.JobID, h.CorrelationID }

// check validates the header fields.
func (h Header) check(c *checker) {
	if h.SchemaVersion != SchemaVersion {
		c.fail("schema_version", "must be %d, got %d", SchemaVersion, h.SchemaVersion)
	}
	c.jobID("job_id", h.JobID)
	c.correlationID("correlation_id", h.CorrelationID)
	c.time("time", h.Time)
}

// Event is implemented by every event type.
type Event interface {
	EventType() string
	IDs() (jobID, correlationID string)
	Validate() error
}
