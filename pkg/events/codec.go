package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"time"
	"unicode/utf8"
)

// Encode validates e and marshals it to its wire form. It refuses an invalid event, and
// one whose encoding would exceed MaxBodyBytes, with an error that wraps ErrInvalid.
func Encode(e Event) ([]byte, error) {
	if e == nil {
		return nil, fmt.Errorf("encoding: %w: nil event", ErrInvalid)
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("encoding %s: %w", e.EventType(), err)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // recipe parameters are full of & < >: keep them legible
	if err := enc.Encode(e); err != nil {
		return nil, fmt.Errorf("encoding %s: %w", e.EventType(), err)
	}
	out := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(out) > MaxBodyBytes {
		return nil, fmt.Errorf("encoding %s: %w: body is %d bytes, limit %d", e.EventType(), ErrInvalid, len(out), MaxBodyBytes)
	}
	return out, nil
}

// Decode decodes a body of the given event type (one of Types) into that type's value,
// e.g. a JobSubmitted (not a pointer). Every error wraps ErrInvalid.
func Decode(eventType string, data []byte) (Event, error) {
	switch eventType {
	case TypeJobSubmitted:
		return DecodeJobSubmitted(data)
	case TypeFleetPlanned:
		return DecodeFleetPlanned(data)
	case TypeFleetLaunched:
		return DecodeFleetLaunched(data)
	case TypeFleetBootstrapped:
		return DecodeFleetBootstrapped(data)
	case TypeTaskReported:
		return DecodeTaskReported(data)
	case TypeJobFinished:
		return DecodeJobFinished(data)
	case TypeFleetTerminated:
		return DecodeFleetTerminated(data)
	case TypeInstanceLost:
		return DecodeInstanceLost(data)
	}
	return nil, fmt.Errorf("decoding: %w: unknown event type %s", ErrInvalid, quote(eventType))
}

// DecodeJobSubmitted decodes and validates a JobSubmitted body.
func DecodeJobSubmitted(data []byte) (JobSubmitted, error) { return decode[JobSubmitted](data) }

// DecodeFleetPlanned decodes and validates a FleetPlanned body.
func DecodeFleetPlanned(data []byte) (FleetPlanned, error) { return decode[FleetPlanned](data) }

// DecodeFleetLaunched decodes and validates a FleetLaunched body.
func DecodeFleetLaunched(data []byte) (FleetLaunched, error) { return decode[FleetLaunched](data) }

// DecodeFleetBootstrapped decodes and validates a FleetBootstrapped body.
func DecodeFleetBootstrapped(data []byte) (FleetBootstrapped, error) {
	return decode[FleetBootstrapped](data)
}

// DecodeTaskReported decodes and validates a TaskReported body.
func DecodeTaskReported(data []byte) (TaskReported, error) { return decode[TaskReported](data) }

// DecodeJobFinished decodes and validates a JobFinished body.
func DecodeJobFinished(data []byte) (JobFinished, error) { return decode[JobFinished](data) }

// DecodeFleetTerminated decodes and validates a FleetTerminated body.
func DecodeFleetTerminated(data []byte) (FleetTerminated, error) {
	return decode[FleetTerminated](data)
}

// DecodeInstanceLost decodes and validates an InstanceLost body.
func DecodeInstanceLost(data []byte) (InstanceLost, error) { return decode[InstanceLost](data) }

// decode runs the checks in the order that gives the most useful message: size, syntax,
// schema version (before unknown fields, which a newer version would have), keys and
// JSON types, then the type's own Validate.
func decode[T Event](data []byte) (T, error) {
	var zero, v T
	fail := func(err error) (T, error) {
		return zero, fmt.Errorf("decoding %s: %w", v.EventType(), err)
	}
	if len(data) > MaxBodyBytes {
		return fail(fmt.Errorf("%w: body is %d bytes, limit %d", ErrInvalid, len(data), MaxBodyBytes))
	}
	if !utf8.Valid(data) {
		return fail(fmt.Errorf("%w: body is not valid UTF-8", ErrInvalid))
	}
	if err := checkSyntax(data); err != nil {
		return fail(err)
	}
	if err := checkVersion(data); err != nil {
		return fail(err)
	}
	if err := checkShape(data, reflect.TypeOf(v)); err != nil {
		return fail(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		// checkShape should have caught anything the decoder rejects.
		return fail(fmt.Errorf("%w: %v", ErrInvalid, err))
	}
	normalize(reflect.ValueOf(&v).Elem())
	if err := v.Validate(); err != nil {
		return fail(err)
	}
	return v, nil
}

// checkSyntax accepts exactly one JSON object, optionally surrounded by white space.
func checkSyntax(data []byte) error {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return fmt.Errorf("%w: body must be a JSON object", ErrInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return fmt.Errorf("%w: malformed JSON: %v", ErrInvalid, syntaxMessage(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: unexpected data after the JSON object at byte %d", ErrInvalid, dec.InputOffset())
	}
	return nil
}

func syntaxMessage(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%v at byte %d", se, se.Offset)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return "unexpected end of input"
	}
	return err.Error()
}

// checkVersion accepts exactly SchemaVersion and says what it saw otherwise.
func checkVersion(data []byte) error {
	var probe struct {
		SchemaVersion json.RawMessage `json:"schema_version"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	seen := string(probe.SchemaVersion)
	switch seen {
	case strconv.Itoa(SchemaVersion):
		return nil
	case "":
		return &FieldError{Field: "schema_version", Reason: fmt.Sprintf("missing; this build reads only version %d", SchemaVersion)}
	}
	if len(seen) > 32 {
		seen = seen[:32] + "..."
	}
	return &FieldError{Field: "schema_version", Reason: fmt.Sprintf("unsupported version %s; this build reads only version %d", seen, SchemaVersion)}
}

var timeType = reflect.TypeFor[time.Time]()

// normalize puts a decoded value in its canonical form, the one a round trip returns:
// times in UTC, empty lists and maps nil.
func normalize(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			normalize(v.Elem())
		}
	case reflect.Struct:
		if v.Type() == timeType {
			v.Set(reflect.ValueOf(v.Interface().(time.Time).UTC()))
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				normalize(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.Len() == 0 {
			v.SetZero()
			return
		}
		for i := range v.Len() {
			normalize(v.Index(i))
		}
	case reflect.Map:
		if v.Len() == 0 {
			v.SetZero()
		}
	}
}
