package events

import (
	"errors"
	"fmt"
	"strconv"
)

// FieldError is one problem with one field. Field is the field's JSON path
// (instances[2].ssh_endpoint, params.SIZE); Reason says what is wrong and what was seen.
// Every FieldError wraps ErrInvalid.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Reason
	}
	return e.Field + ": " + e.Reason
}

// Unwrap makes errors.Is(err, ErrInvalid) hold for every field error.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// FieldErrors returns every *FieldError in err's tree (errors.As finds only the first).
func FieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case nil:
		case *FieldError:
			out = append(out, e)
		case interface{ Unwrap() []error }:
			for _, e := range e.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			walk(e.Unwrap())
		}
	}
	walk(err)
	return out
}

// maxReported bounds the problems listed in one error, so that a hostile body can not
// produce a huge error message; the rest are counted.
const maxReported = 50

// checker collects field errors.
type checker struct {
	errs    []error
	dropped int
}

func (c *checker) fail(field, format string, args ...any) {
	if len(c.errs) >= maxReported {
		c.dropped++
		return
	}
	c.errs = append(c.errs, &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
}

func (c *checker) failed() bool { return len(c.errs) > 0 }

// err returns every collected problem joined, or nil.
func (c *checker) err() error {
	errs := c.errs
	if c.dropped > 0 {
		errs = append(errs[:len(errs):len(errs)], fmt.Errorf("%w: %d more problems not shown", ErrInvalid, c.dropped))
	}
	return errors.Join(errs...)
}

// quote renders a value seen in input for an error message: quoted, escaped and cut short.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}
