package bus

import (
	"errors"
	"fmt"

	"github.com/sortie-fleet/sortie/pkg/events"
)

// ErrNotProvisioned is wrapped by the error for a queue or topic that does not exist:
// the stack has not been created (or was created with another prefix).
var ErrNotProvisioned = errors.New("not provisioned")

// MissingError names a queue or topic that does not exist. It wraps ErrNotProvisioned.
type MissingError struct {
	Kind string // "queue" or "topic"
	Name string
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("%s %s does not exist: run `sortie infra up` to create the stack's topics and queues", e.Kind, e.Name)
}

// Unwrap makes errors.Is(err, ErrNotProvisioned) hold.
func (e *MissingError) Unwrap() error { return ErrNotProvisioned }

// Permanent marks err as permanent: no retry can fix it (the input is invalid, the job
// names something that does not exist). The router sends the message to its queue's DLQ
// at once, with the error as the reason, and never retries it. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// IsPermanent reports whether err was marked with Permanent or wraps events.ErrInvalid
// (an event that can not be decoded or validated).
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p) || errors.Is(err, events.ErrInvalid)
}

// Abandon marks err as the end of a handler that must leave its message alone, as a
// process killed in the middle of handling would: no in-process retry, no DLQ, and the
// message is neither acknowledged nor made visible again, so SQS delivers it again once its
// visibility timeout has run out. The ledger's fault hook uses it to simulate a crash.
// Abandon(nil) is nil.
func Abandon(err error) error {
	if err == nil {
		return nil
	}
	return &abandonError{err: err}
}

type abandonError struct{ err error }

func (e *abandonError) Error() string { return e.err.Error() }
func (e *abandonError) Unwrap() error { return e.err }

// IsAbandoned reports whether err was marked with Abandon.
func IsAbandoned(err error) bool {
	var a *abandonError
	return errors.As(err, &a)
}
