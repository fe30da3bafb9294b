// Package events is the only contract between Sortie's services: one type per event,
// validation, schema version, JSON on the wire.
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

// IDs returns the job and correlation ids every log line and message carries.
func (h Header) IDs() (jobID, correlationID string) { return h.JobID, h.CorrelationID }

// Event is implemented by every event type.
type Event interface {
	EventType() string
	IDs() (jobID, correlationID string)
	Validate() error
}
