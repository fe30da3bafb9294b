package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// fuzzDecoder checks that a decoder never panics, that every error wraps ErrInvalid, and
// that whatever it accepts re-encodes and decodes to an equal value.
//
// Each input is a body plus an edit of the golden body: key's value replaced by value
// (raw JSON). Raw bodies alone rarely survive mutation as valid events; edits of one
// field of a valid event do, so the round trip is exercised on odd but valid values too.
// The seeds are the golden body (pretty and compact, with near misses) and, for each of
// its top-level keys, the edit that sets it to its own value.
func fuzzDecoder[T Event](f *testing.F, decode func([]byte) (T, error)) {
	var zero T
	golden := readGolden(f, zero.EventType())
	var compact bytes.Buffer
	if err := json.Compact(&compact, golden); err != nil {
		f.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(golden, &fields); err != nil {
		f.Fatal(err)
	}
	c := compact.Bytes()
	f.Add(golden, "", []byte(nil))
	f.Add(c, "", []byte(nil))
	f.Add(bytes.Replace(c, []byte(`"schema_version":1`), []byte(`"schema_version":2`), 1), "", []byte(nil))
	f.Add(bytes.Replace(c, []byte(`"job_id"`), []byte(`"Job_Id"`), 1), "", []byte(nil))
	f.Add(bytes.Replace(c, []byte(`{"schema_version":1,`), []byte(`{"schema_version":1,"schema_version":1,`), 1), "", []byte(nil))
	f.Add([]byte(`{"schema_version":1}`), "", []byte(nil))
	for k, v := range fields {
		f.Add([]byte(nil), k, []byte(v))
	}
	f.Fuzz(func(t *testing.T, data []byte, key string, value []byte) {
		roundTrip(t, decode, data)
		if key == "" {
			return
		}
		edited := make(map[string]json.RawMessage, len(fields)+1)
		for k, v := range fields {
			edited[k] = v
		}
		edited[key] = value
		if body, err := json.Marshal(edited); err == nil { // err: value is not JSON
			roundTrip(t, decode, body)
		}
	})
}

func roundTrip[T Event](t *testing.T, decode func([]byte) (T, error), data []byte) {
	t.Helper()
	v, err := decode(data)
	if err != nil {
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("error does not wrap ErrInvalid: %v", err)
		}
		return
	}
	body, err := Encode(v)
	if err != nil {
		// encoding/json writes U+2028 and U+2029 as 6-byte escapes, so a body near the
		// limit may grow past it; that is the only acceptable failure.
		if errors.Is(err, ErrInvalid) && strings.Contains(err.Error(), "limit") {
			return
		}
		t.Fatalf("decoded value does not encode: %v\ninput: %q", err, data)
	}
	again, err := decode(body)
	if err != nil {
		t.Fatalf("re-encoded value does not decode: %v\nbody: %s", err, body)
	}
	if !reflect.DeepEqual(v, again) {
		t.Fatalf("round trip changed the value:\nfirst:  %#v\nsecond: %#v", v, again)
	}
}

func FuzzDecodeJobSubmitted(f *testing.F)      { fuzzDecoder(f, DecodeJobSubmitted) }
func FuzzDecodeFleetPlanned(f *testing.F)      { fuzzDecoder(f, DecodeFleetPlanned) }
func FuzzDecodeFleetLaunched(f *testing.F)     { fuzzDecoder(f, DecodeFleetLaunched) }
func FuzzDecodeFleetBootstrapped(f *testing.F) { fuzzDecoder(f, DecodeFleetBootstrapped) }
func FuzzDecodeTaskReported(f *testing.F)      { fuzzDecoder(f, DecodeTaskReported) }
func FuzzDecodeJobFinished(f *testing.F)       { fuzzDecoder(f, DecodeJobFinished) }
func FuzzDecodeFleetTerminated(f *testing.F)   { fuzzDecoder(f, DecodeFleetTerminated) }
func FuzzDecodeInstanceLost(f *testing.F)      { fuzzDecoder(f, DecodeInstanceLost) }
