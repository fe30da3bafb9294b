// Package events is the only contract between Sortie's services: one type per event,
// validation, schema version, JSON on the wire.
//
// # Wire format
//
// An event travels as the body of one SNS/SQS message: a single UTF-8 JSON object of at
// most [MaxBodyBytes] (SNS's own limit). The event type is not in the body; it is the
// topic's name and the message's metadata, and selects the decoder ([Decode]). Every body
// starts with the [Header] fields, flattened into the object:
//
//	{"schema_version":1,"job_id":"job-42","correlation_id":"c0ffee","time":"2025-01-02T03:04:05Z", ...}
//
// Field names are snake_case, times are RFC 3339 strings (decoded to UTC), durations are
// integers with their unit in the name (deadline_seconds, duration_ms), optional lists and
// maps are omitted when empty and decode to nil. testdata/*.json holds one valid example
// of every event and pins the format.
//
// Decoding is strict, and every error it returns wraps [ErrInvalid] (a permanent error:
// dead-letter the message, never retry it). A body is rejected when it is over
// [MaxBodyBytes], is not valid UTF-8, is not exactly one JSON object, has a
// schema_version other than [SchemaVersion] (a missing version is never guessed), has
// an unknown, misspelt (names match case-sensitively) or duplicated key, has a value of
// the wrong JSON type (null only where a list, map or optional object may be), or fails
// the type's Validate. Field problems are [*FieldError] values naming the field by its
// JSON path (instances[2].ssh_endpoint); all of them are reported at once, joined with
// [errors.Join], and [FieldErrors] lists them.
//
// [Encode] validates before it marshals, so a service can not publish what its consumer
// would reject, and it refuses output over [MaxBodyBytes]: producers of large fleets keep
// per-instance output tails short.
//
// A change to the wire format that an older consumer could not read (a new required
// field, a renamed field, a changed meaning) needs a new SchemaVersion.
package events
