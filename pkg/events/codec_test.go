package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.json from the fixtures")

// TestGolden pins the wire format: each fixture encodes to its testdata file, and the file
// decodes to the fixture.
// TestGoldenExitReport pins the wire form of an exit report (TaskReported with kind
// exited) in testdata/TaskReported-exited.json, beside the task report's.
func TestGoldenExitReport(t *testing.T) {
	e := validExitReport()
	path := filepath.Join("testdata", "TaskReported-exited.json")
	got, err := Encode(e)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	if *update {
		var pretty bytes.Buffer
		if err := json.Indent(&pretty, got, "", "  "); err != nil {
			t.Fatal(err)
		}
		pretty.WriteByte('\n')
		if err := os.WriteFile(path, pretty.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	golden, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./pkg/events -run TestGoldenExitReport -update)", err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, golden); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, compact.Bytes()) {
		t.Errorf("Encode differs from %s:\n got: %s\nwant: %s", path, got, compact.Bytes())
	}
	decoded, err := DecodeTaskReported(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(decoded, e) || !decoded.Exited() {
		t.Errorf("DecodeTaskReported(golden) = %#v, want %#v", decoded, e)
	}
	// A task report's golden body has neither key: reports of older workers still decode.
	if bytes.Contains(readGolden(t, TypeTaskReported), []byte(`"kind"`)) {
		t.Error("the task report's golden body carries kind")
	}
}

func TestGolden(t *testing.T) {
	for _, e := range validEvents() {
		t.Run(e.EventType(), func(t *testing.T) {
			got, err := Encode(e)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if *update {
				var pretty bytes.Buffer
				if err := json.Indent(&pretty, got, "", "  "); err != nil {
					t.Fatal(err)
				}
				pretty.WriteByte('\n')
				if err := os.WriteFile(goldenPath(e.EventType()), pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			golden := readGolden(t, e.EventType())
			var compact bytes.Buffer
			if err := json.Compact(&compact, golden); err != nil {
				t.Fatalf("golden file is not JSON: %v", err)
			}
			if !bytes.Equal(got, compact.Bytes()) {
				t.Errorf("Encode differs from %s:\n got: %s\nwant: %s", goldenPath(e.EventType()), got, compact.Bytes())
			}
			decoded, err := Decode(e.EventType(), golden)
			if err != nil {
				t.Fatalf("Decode(golden): %v", err)
			}
			if !reflect.DeepEqual(decoded, e) {
				t.Errorf("Decode(golden) = %#v, want %#v", decoded, e)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	for _, e := range validEvents() {
		t.Run(e.EventType(), func(t *testing.T) {
			body, err := Encode(e)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			got, err := Decode(e.EventType(), body)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if reflect.TypeOf(got) != reflect.TypeOf(e) {
				t.Fatalf("Decode returned %T, want %T", got, e)
			}
			if !reflect.DeepEqual(got, e) {
				t.Errorf("round trip changed the event:\n got: %#v\nwant: %#v", got, e)
			}
			if j, c := got.IDs(); j != "job-202-files" || c != "corr-5e1f0a7c" {
				t.Errorf("IDs() = %q, %q", j, c)
			}
		})
	}
}

func TestTypesMatchEvents(t *testing.T) {
	events := validEvents()
	if len(events) != len(Types) {
		t.Fatalf("%d fixtures for %d types", len(events), len(Types))
	}
	for i, e := range events {
		if e.EventType() != Types[i] {
			t.Errorf("Types[%d] = %s, fixture is %s", i, Types[i], e.EventType())
		}
	}
}

func TestDecodeUnknownType(t *testing.T) {
	_, err := Decode("JobStarted", readGolden(t, TypeJobSubmitted))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `unknown event type "JobStarted"`) {
		t.Fatalf("err = %v, want an ErrInvalid naming the type", err)
	}
}

// body returns the JobSubmitted golden body with edits applied to its top-level object.
func body(t *testing.T, edit func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(readGolden(t, TypeJobSubmitted), &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	return mustJSON(t, m)
}

func TestDecodeRejects(t *testing.T) {
	golden := bytes.TrimSpace(readGolden(t, TypeJobSubmitted))
	replace := func(old, new string) []byte {
		t.Helper()
		if !bytes.Contains(golden, []byte(old)) {
			t.Fatalf("golden file has no %q", old)
		}
		return bytes.Replace(golden, []byte(old), []byte(new), 1)
	}
	tests := []struct {
		name  string
		body  []byte
		field string // the field error expected; "" for an error about the whole body
		want  string // a substring of the message
	}{
		{"empty", nil, "", "must be a JSON object"},
		{"null", []byte("null"), "", "must be a JSON object"},
		{"array", []byte(`[{"schema_version":1}]`), "", "must be a JSON object"},
		{"string", []byte(`"x"`), "", "must be a JSON object"},
		{"truncated", golden[:len(golden)/2], "", "malformed JSON: unexpected end of input"},
		{"syntax error", []byte(`{"schema_version":1,}`), "", "malformed JSON: invalid character '}'"},
		{"trailing object", append(append([]byte{}, golden...), "{}"...), "", "unexpected data after the JSON object"},
		{"trailing garbage", append(append([]byte{}, golden...), " x"...), "", "unexpected data after the JSON object"},
		{"bad UTF-8", replace(`"batch-small"`, "\"batch-\xff\""), "", "not valid UTF-8"},
		{"version missing", body(t, func(m map[string]any) { delete(m, "schema_version") }), "schema_version", "missing; this build reads only version 1"},
		{"version 2", body(t, func(m map[string]any) { m["schema_version"] = 2 }), "schema_version", "unsupported version 2"},
		{"version 0", body(t, func(m map[string]any) { m["schema_version"] = 0 }), "schema_version", "unsupported version 0"},
		{"version string", body(t, func(m map[string]any) { m["schema_version"] = "1" }), "schema_version", `unsupported version "1"`},
		{"version null", body(t, func(m map[string]any) { m["schema_version"] = nil }), "schema_version", "unsupported version null"},
		{"version float", replace(`"schema_version": 1`, `"schema_version": 1.0`), "schema_version", "unsupported version 1.0"},
		{"version 2 with new fields", body(t, func(m map[string]any) { m["schema_version"] = 2; m["priority"] = "high" }), "schema_version", "unsupported version 2"},
		{"unknown field", body(t, func(m map[string]any) { m["priority"] = "high" }), "priority", "unknown field"},
		{"unknown nested field", body(t, func(m map[string]any) { m["work"].(map[string]any)["size"] = 3 }), "work.size", "unknown field"},
		{"unknown odd field", body(t, func(m map[string]any) { m["a b"] = 1 }), `["a b"]`, "unknown field"},
		{"field in wrong case", replace(`"job_id"`, `"Job_ID"`), "Job_ID", `case-sensitive: did you mean "job_id"`},
		{"field with Kelvin sign", replace(`"work"`, "\"wor\u212a\""), "[\"wor\u212a\"]", "did you mean \"work\""},
		{"duplicate field", replace(`"job_id": "job-202-files"`, `"job_id": "job-202-files", "job_id": "other"`), "job_id", "duplicate key"},
		{"duplicate param", replace(`"QUALITY": "85"`, `"QUALITY": "85", "QUALITY": "1"`), "params.QUALITY", "duplicate key"},
		{"string as number", body(t, func(m map[string]any) { m["job_id"] = 5 }), "job_id", "must be a string, got number 5"},
		{"string null", body(t, func(m map[string]any) { m["template"] = nil }), "template", "must be a string, got null"},
		{"int as string", body(t, func(m map[string]any) { m["deadline_seconds"] = "600" }), "deadline_seconds", `must be an integer within 64 bits, got string "600"`},
		{"int as float", body(t, func(m map[string]any) { m["deadline_seconds"] = 1.5 }), "deadline_seconds", "got number 1.5"},
		{"int overflow", replace(`"deadline_seconds": 600`, `"deadline_seconds": 1e99`), "deadline_seconds", "got number 1e99"},
		{"best effort as string", body(t, func(m map[string]any) { m["best_effort"] = "yes" }), "best_effort", "must be"},
		{"time garbage", body(t, func(m map[string]any) { m["time"] = "yesterday" }), "time", `must be an RFC 3339 time string, got string "yesterday"`},
		{"time without zone", body(t, func(m map[string]any) { m["time"] = "2025-03-14T09:26:53" }), "time", "RFC 3339"},
		{"time as number", body(t, func(m map[string]any) { m["time"] = 1741944413 }), "time", "RFC 3339"},
		{"object as array", body(t, func(m map[string]any) { m["work"] = []any{} }), "work", "must be an object, got an array"},
		{"map value as number", body(t, func(m map[string]any) { m["params"] = map[string]any{"A": 1} }), "params.A", "must be a string, got number 1"},
		{"nested type error", body(t, func(m map[string]any) { m["work"] = map[string]any{"s3": map[string]any{"bucket": true}} }), "work.s3.bucket", "must be a string, got true"},
		{"NUL escaped in a string", replace(`"job-202-files"`, `"job-202\u0000"`), "job_id", `must match [A-Za-z0-9._-]{1,64}, got "job-202\x00"`},
		{"validation after decoding", body(t, func(m map[string]any) { m["deadline_seconds"] = 0 }), "deadline_seconds", "must be between 1 and 604800, got 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeJobSubmitted(tt.body)
			if err == nil {
				t.Fatalf("decoded %s", tt.body)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "decoding JobSubmitted: ") {
				t.Fatalf("error %q does not say what was being decoded", err)
			}
			fields := fieldsOfErr(err)
			switch {
			case tt.field == "" && len(fields) > 0:
				t.Fatalf("want a body error, got field errors %v: %v", fields, err)
			case tt.field != "" && (len(fields) != 1 || fields[0] != tt.field):
				t.Fatalf("want one error about %s, got %v: %v", tt.field, fields, err)
			}
		})
	}
}

func TestDecodeReportsEveryShapeProblem(t *testing.T) {
	data := body(t, func(m map[string]any) {
		m["job_id"] = 1
		m["extra"] = true
		m["work"] = map[string]any{"count": "many"}
	})
	_, err := DecodeJobSubmitted(data)
	got := strings.Join(fieldsOfErr(err), ",")
	if got != "extra,job_id,work.count" {
		t.Fatalf("fields = %s, want extra,job_id,work.count (err: %v)", got, err)
	}
}

func TestDecodeNestedPaths(t *testing.T) {
	var m map[string]any
	if err := json.Unmarshal(readGolden(t, TypeFleetBootstrapped), &m); err != nil {
		t.Fatal(err)
	}
	inst := m["instances"].([]any)[1].(map[string]any)
	inst["steps"].([]any)[0].(map[string]any)["exit_code"] = "127"
	inst["nickname"] = "b"
	_, err := DecodeFleetBootstrapped(mustJSON(t, m))
	got := strings.Join(fieldsOfErr(err), ",")
	if got != "instances[1].nickname,instances[1].steps[0].exit_code" {
		t.Fatalf("fields = %s (err: %v)", got, err)
	}
}

func TestDecodeBodySize(t *testing.T) {
	golden := readGolden(t, TypeJobSubmitted)
	pad := func(n int) []byte { // the golden body padded with white space to n bytes
		return append(append([]byte{}, golden...), bytes.Repeat([]byte(" "), n-len(golden))...)
	}
	if _, err := DecodeJobSubmitted(pad(MaxBodyBytes)); err != nil {
		t.Fatalf("a body of exactly MaxBodyBytes: %v", err)
	}
	_, err := DecodeJobSubmitted(pad(MaxBodyBytes + 1))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "body is 262145 bytes, limit 262144") {
		t.Fatalf("a body of MaxBodyBytes+1: err = %v", err)
	}
	// The limit applies before parsing: an over-long body of garbage says "too long".
	_, err = DecodeJobSubmitted(bytes.Repeat([]byte("{"), MaxBodyBytes+1))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "limit 262144") {
		t.Fatalf("over-long garbage: err = %v", err)
	}
}

func TestDecodeNormalizes(t *testing.T) {
	data := body(t, func(m map[string]any) {
		m["time"] = "2025-03-14T11:26:53.5+02:00"
		m["params"] = map[string]any{}
	})
	got, err := DecodeJobSubmitted(data)
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2025, 3, 14, 9, 26, 53, 5e8, time.UTC); got.Time != want {
		t.Errorf("time = %v (%v), want %v in UTC", got.Time, got.Time.Location(), want)
	}
	if got.Params != nil {
		t.Errorf("empty params decoded to %#v, want nil", got.Params)
	}
	// null is accepted where a list, map or optional object may be.
	data = body(t, func(m map[string]any) {
		m["params"] = nil
		m["work"] = map[string]any{"count": 3, "s3": nil}
	})
	if _, err := DecodeJobSubmitted(data); err != nil {
		t.Errorf("null params and s3: %v", err)
	}
}

func TestEncodeRejectsInvalid(t *testing.T) {
	v := validJobSubmitted()
	v.Template = "Bad Name"
	_, err := Encode(v)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `encoding JobSubmitted: template: must match`) {
		t.Fatalf("err = %v", err)
	}
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "template" {
		t.Fatalf("errors.As found %+v", fe)
	}
	if _, err := Encode(nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Encode(nil): err = %v", err)
	}
}

func TestEncodeRejectsOversizedBody(t *testing.T) {
	v := validFleetBootstrapped()
	tail := make([]string, MaxTailLines)
	for i := range tail {
		tail[i] = repeat("x", 200)
	}
	v.Instances = make([]InstanceResult, 30)
	for i := range v.Instances {
		v.Instances[i] = InstanceResult{ID: fmt.Sprintf("i-%08x", i), SSHEndpoint: "127.0.0.1:22", OK: true,
			Steps: []StepResult{{Name: "run", OutputTail: tail}}}
	}
	if err := v.Validate(); err != nil {
		t.Fatalf("the event itself is valid: %v", err)
	}
	_, err := Encode(v)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "limit 262144") {
		t.Fatalf("err = %v", err)
	}
}

func TestEncodeKeepsShellMetacharactersLegible(t *testing.T) {
	got, err := Encode(validJobSubmitted())
	if err != nil {
		t.Fatal(err)
	}
	if want := `"FILTER":"*.jpg && echo 'ok' > /dev/null"`; !bytes.Contains(got, []byte(want)) {
		t.Fatalf("encoded body %s lacks %s", got, want)
	}
}

func TestNewHeader(t *testing.T) {
	now := time.Now().In(time.FixedZone("CET", 3600)) // carries a monotonic reading
	h := NewHeader("job-1", "corr-1", now)
	if h.SchemaVersion != SchemaVersion || h.JobID != "job-1" || h.CorrelationID != "corr-1" {
		t.Fatalf("NewHeader = %+v", h)
	}
	if h.Time.Location() != time.UTC || !h.Time.Equal(now) {
		t.Fatalf("time = %v, want %v in UTC", h.Time, now)
	}
	e := validTaskReported()
	e.Header = h
	body, err := Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeTaskReported(body)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, e) {
		t.Fatalf("round trip of a NewHeader time changed it: %v != %v", got.Time, e.Time)
	}
}

func TestFieldErrorWrapsErrInvalid(t *testing.T) {
	var err error = &FieldError{Field: "job_id", Reason: "must be set"}
	if !errors.Is(err, ErrInvalid) || err.Error() != "job_id: must be set" {
		t.Fatalf("err = %v", err)
	}
	joined := fmt.Errorf("ctx: %w", errors.Join(err, &FieldError{Field: "time", Reason: "x"}))
	if got := fieldsOfErr(joined); strings.Join(got, ",") != "job_id,time" {
		t.Fatalf("FieldErrors = %v", got)
	}
}
