package events

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

// rule is one mutation of a valid event. field is the JSON path the error must name, or
// "" when the mutated event is still valid (a boundary). noWire marks mutations JSON can
// not carry (NaN, invalid UTF-8), which are checked through Validate and Encode only.
type rule[T Event] struct {
	name   string
	mutate func(*T)
	field  string
	noWire bool
}

// checkRules applies every rule (the header's first) to a fresh valid event and checks
// that Validate, Encode and the decoder (on the JSON of the mutated value) all reject it,
// naming exactly the mutated field, with an error that wraps ErrInvalid.
func checkRules[T Event](t *testing.T, valid func() T, decode func([]byte) (T, error), hdr func(*T) *Header, rules []rule[T]) {
	t.Helper()
	if err := valid().Validate(); err != nil {
		t.Fatalf("fixture is invalid: %v", err)
	}
	for _, r := range append(headerRules(hdr), rules...) {
		t.Run(r.name, func(t *testing.T) {
			v := valid()
			r.mutate(&v)
			err := v.Validate()
			if r.field == "" {
				if err != nil {
					t.Fatalf("Validate: want valid, got %v", err)
				}
				body, err := Encode(v)
				if err != nil {
					t.Fatalf("Encode: %v", err)
				}
				if _, err := decode(body); err != nil {
					t.Fatalf("decode: %v", err)
				}
				return
			}
			assertFieldError(t, "Validate", err, r.field)
			_, err = Encode(v)
			assertFieldError(t, "Encode", err, r.field)
			if r.noWire {
				return
			}
			_, err = decode(mustJSON(t, v))
			assertFieldError(t, "decode", err, r.field)
		})
	}
}

// assertFieldError checks that err wraps ErrInvalid and that every field error in it names
// field, and that there is at least one.
func assertFieldError(t *testing.T, op string, err error, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: want an error naming %s, got nil", op, field)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("%s: error does not wrap ErrInvalid: %v", op, err)
	}
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("%s: no *FieldError in %v", op, err)
	}
	fields := fieldsOfErr(err)
	for _, f := range fields {
		if f != field {
			t.Fatalf("%s: want errors only about %s, got fields %v: %v", op, field, fields, err)
		}
	}
	if !strings.Contains(err.Error(), field+": ") {
		t.Fatalf("%s: message does not name %s: %v", op, field, err)
	}
}

func headerRules[T Event](hdr func(*T) *Header) []rule[T] {
	set := func(f func(*Header)) func(*T) { return func(v *T) { f(hdr(v)) } }
	return []rule[T]{
		{"schema_version zero", set(func(h *Header) { h.SchemaVersion = 0 }), "schema_version", false},
		{"schema_version newer", set(func(h *Header) { h.SchemaVersion = SchemaVersion + 1 }), "schema_version", false},
		{"job_id empty", set(func(h *Header) { h.JobID = "" }), "job_id", false},
		{"job_id space", set(func(h *Header) { h.JobID = "a b" }), "job_id", false},
		{"job_id slash", set(func(h *Header) { h.JobID = "a/b" }), "job_id", false},
		{"job_id non-ASCII", set(func(h *Header) { h.JobID = "jöb" }), "job_id", false},
		{"job_id NUL", set(func(h *Header) { h.JobID = "a\x00" }), "job_id", false},
		{"job_id 65 chars", set(func(h *Header) { h.JobID = repeat("a", 65) }), "job_id", false},
		{"job_id 64 chars ok", set(func(h *Header) { h.JobID = repeat("A._-9", 12) + "abcd" }), "", false},
		{"correlation_id empty", set(func(h *Header) { h.CorrelationID = "" }), "correlation_id", false},
		{"correlation_id 129 chars", set(func(h *Header) { h.CorrelationID = repeat("c", 129) }), "correlation_id", false},
		{"correlation_id control", set(func(h *Header) { h.CorrelationID = "c\n1" }), "correlation_id", false},
		{"correlation_id NUL", set(func(h *Header) { h.CorrelationID = "c\x00" }), "correlation_id", false},
		{"correlation_id non-ASCII", set(func(h *Header) { h.CorrelationID = "ça" }), "correlation_id", false},
		{"correlation_id 128 printable ok", set(func(h *Header) { h.CorrelationID = repeat("a ~", 42) + "!#" }), "", false},
		{"time zero", set(func(h *Header) { h.Time = time.Time{} }), "time", false},
		{"time before 2000", set(func(h *Header) { h.Time = time.Date(1999, 12, 31, 0, 0, 0, 0, time.UTC) }), "time", false},
		{"time 2200", set(func(h *Header) { h.Time = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC) }), "time", false},
		{"time other zone ok", set(func(h *Header) { h.Time = h.Time.In(time.FixedZone("X", 5*3600)) }), "", false},
	}
}

// nameRules are the rules of a required template/profile/recipe name.
func nameRules[T Event](field string, set func(*T, string)) []rule[T] {
	to := func(s string) func(*T) { return func(v *T) { set(v, s) } }
	return []rule[T]{
		{field + " empty", to(""), field, false},
		{field + " upper case", to("Batch"), field, false},
		{field + " leading dash", to("-batch"), field, false},
		{field + " leading dot", to(".batch"), field, false},
		{field + " slash", to("a/b"), field, false},
		{field + " space", to("a b"), field, false},
		{field + " NUL", to("a\x00"), field, false},
		{field + " 65 chars", to(repeat("a", 65)), field, false},
		{field + " 64 chars ok", to("0" + repeat("a._-", 15) + "xyz"), "", false},
	}
}

func fleetIDRules[T Event](set func(*T, string)) []rule[T] {
	to := func(s string) func(*T) { return func(v *T) { set(v, s) } }
	return []rule[T]{
		{"fleet_id empty", to(""), "fleet_id", false},
		{"fleet_id space", to("f 1"), "fleet_id", false},
		{"fleet_id 65 chars", to(repeat("f", 65)), "fleet_id", false},
		{"fleet_id 64 chars ok", to(repeat("F", 64)), "", false},
	}
}

func hostKeyRules[T Event](set func(*T, string)) []rule[T] {
	to := func(s string) func(*T) { return func(v *T) { set(v, s) } }
	return []rule[T]{
		{"host_key empty ok (instance host keys)", to(""), "", false},
		{"host_key garbage", to("not a key"), "host_key", false},
		{"host_key bad base64", to("ssh-ed25519 AAAA!!!!"), "host_key", false},
		{"host_key type mismatch", to("ssh-rsa " + strings.Fields(testHostKey)[1]), "host_key", false},
		{"host_key two keys", to(testHostKey + "\n" + otherHostKey), "host_key", false},
		{"host_key with options", to(`command="/bin/true" ` + testHostKey), "host_key", false},
		{"host_key NUL", to(testHostKey + "\x00"), "host_key", false},
		{"host_key too long", to(testHostKey + " " + repeat("c", MaxHostKeyBytes)), "host_key", false},
		{"host_key without comment ok", to(otherHostKey), "", false},
		{"host_key trailing newline ok", to(testHostKey + "\n"), "", false},
	}
}

func keyNameRules[T Event](set func(*T, string)) []rule[T] {
	to := func(s string) func(*T) { return func(v *T) { set(v, s) } }
	return []rule[T]{
		{"key_name empty", to(""), "key_name", false},
		{"key_name newline", to("a\nb"), "key_name", false},
		{"key_name 256 chars", to(repeat("k", 256)), "key_name", false},
		{"key_name 255 printable ok", to(repeat("k -", 85)), "", false},
	}
}

func endpointRules[T Event](field string, set func(*T, string)) []rule[T] {
	to := func(s string) func(*T) { return func(v *T) { set(v, s) } }
	return []rule[T]{
		{field + " empty", to(""), field, false},
		{field + " no port", to("127.0.0.1"), field, false},
		{field + " port 0", to("127.0.0.1:0"), field, false},
		{field + " port 65536", to("127.0.0.1:65536"), field, false},
		{field + " port signed", to("127.0.0.1:+22"), field, false},
		{field + " port name", to("127.0.0.1:ssh"), field, false},
		{field + " no host", to(":22"), field, false},
		{field + " bad host", to("bad_host:22"), field, false},
		{field + " ipv6 unbracketed", to("::1:22"), field, false},
		{field + " ipv6 zone", to("[fe80::1%eth0]:22"), field, false},
		{field + " NUL", to("a\x00:22"), field, false},
		{field + " ipv6 ok", to("[::1]:2222"), "", false},
		{field + " dns name ok", to("ip-10-0-1-17.ec2.internal:22"), "", false},
		{field + " port 65535 ok", to("10.0.0.1:65535"), "", false},
	}
}

func instanceIDRules[T Event](field string, set func(*T, string)) []rule[T] {
	to := func(s string) func(*T) { return func(v *T) { set(v, s) } }
	return []rule[T]{
		{field + " empty", to(""), field, false},
		{field + " no prefix", to("0a1b2c3d4e5f60718"), field, false},
		{field + " too short", to("i-0a1b2c3"), field, false},
		{field + " too long", to("i-0a1b2c3d4e5f607189"), field, false},
		{field + " upper hex", to("i-0A1B2C3D"), field, false},
		{field + " uuid style", to("i-1b4e28ba-2fa1-11d"), field, false},
		{field + " 8 hex ok", to("i-0a1b2c3d"), "", false},
	}
}

func TestJobSubmittedRules(t *testing.T) {
	type T = JobSubmitted
	rules := []rule[T]{
		{"work none", func(v *T) { v.Work = WorkSource{} }, "work", false},
		{"work count and queue", func(v *T) { v.Work.Queue = "q" }, "work", false},
		{"work count and s3", func(v *T) { v.Work.S3 = &S3Prefix{Bucket: "abc"} }, "work", false},
		{"work count negative", func(v *T) { v.Work.Count = -1 }, "work.count", false},
		{"work count over MaxItems", func(v *T) { v.Work.Count = MaxItems + 1 }, "work.count", false},
		{"work count MaxItems ok", func(v *T) { v.Work.Count = MaxItems }, "", false},
		{"work count 1 ok", func(v *T) { v.Work.Count = 1 }, "", false},
		{"work queue ok", func(v *T) { v.Work = WorkSource{Queue: "Jobs_in-" + repeat("q", 72)} }, "", false},
		{"work queue 81 chars", func(v *T) { v.Work = WorkSource{Queue: repeat("q", 81)} }, "work.queue", false},
		{"work queue dot", func(v *T) { v.Work = WorkSource{Queue: "jobs.fifo"} }, "work.queue", false},
		{"work queue url", func(v *T) { v.Work = WorkSource{Queue: "https://sqs/1/q"} }, "work.queue", false},
		{"work s3 ok", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: "my.input-bucket1", Prefix: "in/2025/ é $x"}} }, "", false},
		{"work s3 empty prefix ok", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: "abc"}} }, "", false},
		{"work s3 bucket empty", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{}} }, "work.s3.bucket", false},
		{"work s3 bucket short", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: "ab"}} }, "work.s3.bucket", false},
		{"work s3 bucket 64 chars", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: repeat("b", 64)}} }, "work.s3.bucket", false},
		{"work s3 bucket 63 chars ok", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: repeat("b", 63)}} }, "", false},
		{"work s3 bucket upper", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: "MyBucket"}} }, "work.s3.bucket", false},
		{"work s3 bucket underscore", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: "my_bucket"}} }, "work.s3.bucket", false},
		{"work s3 bucket trailing dash", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: "bucket-"}} }, "work.s3.bucket", false},
		{"work s3 bucket double dot", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: "my..bucket"}} }, "work.s3.bucket", false},
		{"work s3 bucket ip", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: "192.168.1.1"}} }, "work.s3.bucket", false},
		{"work s3 bucket xn--", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: "xn--bucket"}} }, "work.s3.bucket", false},
		{"work s3 bucket -s3alias", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: "bucket-s3alias"}} }, "work.s3.bucket", false},
		{"work s3 prefix 1025 bytes", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: "abc", Prefix: repeat("p", 1025)}} }, "work.s3.prefix", false},
		{"work s3 prefix NUL", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: "abc", Prefix: "a\x00"}} }, "work.s3.prefix", false},
		{"work s3 prefix bad UTF-8", func(v *T) { v.Work = WorkSource{S3: &S3Prefix{Bucket: "abc", Prefix: "a\xff"}} }, "work.s3.prefix", true},
		{"deadline_seconds zero", func(v *T) { v.DeadlineSeconds = 0 }, "deadline_seconds", false},
		{"deadline_seconds negative", func(v *T) { v.DeadlineSeconds = -600 }, "deadline_seconds", false},
		{"deadline_seconds over 7 days", func(v *T) { v.DeadlineSeconds = 7*24*3600 + 1 }, "deadline_seconds", false},
		{"deadline_seconds 7 days ok", func(v *T) { v.DeadlineSeconds = 7 * 24 * 3600 }, "", false},
		{"deadline_seconds 1 ok", func(v *T) { v.DeadlineSeconds = 1 }, "", false},
		{"params none ok", func(v *T) { v.Params = nil }, "", false},
		{"params key leading digit", func(v *T) { v.Params["1A"] = "x" }, "params", false},
		{"params key dash", func(v *T) { v.Params["A-B"] = "x" }, "params", false},
		{"params key empty", func(v *T) { v.Params[""] = "x" }, "params", false},
		{"params key 65 chars", func(v *T) { v.Params[repeat("K", 65)] = "x" }, "params", false},
		{"params key 64 chars ok", func(v *T) { v.Params["_"+repeat("K", 63)] = "x" }, "", false},
		{"params too many", func(v *T) {
			for i := range MaxParams - len(v.Params) + 1 {
				v.Params[fmt.Sprintf("P%d", i)] = "x"
			}
		}, "params", false},
		{"params at limit ok", func(v *T) {
			for i := range MaxParams - len(v.Params) {
				v.Params[fmt.Sprintf("P%d", i)] = "x"
			}
		}, "", false},
		{"params value too long", func(v *T) { v.Params["BIG"] = repeat("v", MaxParamValueBytes+1) }, "params.BIG", false},
		{"params value at limit ok", func(v *T) { v.Params["BIG"] = repeat("v", MaxParamValueBytes) }, "", false},
		{"params value NUL", func(v *T) { v.Params["Z"] = "a\x00b" }, "params.Z", false},
		{"params value bad UTF-8", func(v *T) { v.Params["Z"] = "\xc3\x28" }, "params.Z", true},
		{"params value shell metacharacters ok", func(v *T) { v.Params["CMD"] = "$(rm -rf /); `id` | a && b || 'c' \"d\" > e < f \n\t*?~#" }, "", false},
		{"params value empty ok", func(v *T) { v.Params["EMPTY"] = "" }, "", false},
	}
	rules = append(rules, nameRules("template", func(v *T, s string) { v.Template = s })...)
	rules = append(rules, nameRules("profile", func(v *T, s string) { v.Profile = s })...)
	rules = append(rules, nameRules("recipe", func(v *T, s string) { v.Recipe = s })...)
	checkRules(t, validJobSubmitted, DecodeJobSubmitted, func(v *T) *Header { return &v.Header }, rules)
}

func TestFleetPlannedRules(t *testing.T) {
	type T = FleetPlanned
	rules := []rule[T]{
		{"plan_revision zero", func(v *T) { v.PlanRevision = 0 }, "plan_revision", false},
		{"plan_revision over max", func(v *T) { v.PlanRevision = MaxPlanRevision + 1 }, "plan_revision", false},
		{"params bad key", func(v *T) { v.Params["a.b"] = "" }, "params", false},
		{"params value NUL", func(v *T) { v.Params["QUALITY"] = "\x00" }, "params.QUALITY", false},
		{"deadline_seconds zero", func(v *T) { v.DeadlineSeconds = 0 }, "deadline_seconds", false},
		{"deadline_seconds over 7 days", func(v *T) { v.DeadlineSeconds = int(MaxDeadline/time.Second) + 1 }, "deadline_seconds", false},
		{"submitted_at zero", func(v *T) { v.SubmittedAt = time.Time{} }, "submitted_at", false},
		{"items negative", func(v *T) { v.Items = -1 }, "items", false},
		{"items over MaxItems", func(v *T) { v.Items = MaxItems + 1 }, "items", false},
		{"items zero ok", func(v *T) { v.Items = 0 }, "", false},
		{"instance_type empty", func(v *T) { v.InstanceType = "" }, "instance_type", false},
		{"instance_type no size", func(v *T) { v.InstanceType = "m3" }, "instance_type", false},
		{"instance_type upper", func(v *T) { v.InstanceType = "M3.medium" }, "instance_type", false},
		{"instance_type metal ok", func(v *T) { v.InstanceType = "u-6tb1.metal" }, "", false},
		{"count zero", func(v *T) { v.Count = 0 }, "count", false},
		{"count over MaxInstances", func(v *T) { v.Count = MaxInstances + 1 }, "count", false},
		{"count MaxInstances ok", func(v *T) { v.Count = MaxInstances }, "", false},
		{"estimated_seconds negative", func(v *T) { v.EstimatedSeconds = -0.5 }, "estimated_seconds", false},
		{"estimated_seconds too large", func(v *T) { v.EstimatedSeconds = MaxEstimatedSeconds * 2 }, "estimated_seconds", false},
		{"estimated_seconds NaN", func(v *T) { v.EstimatedSeconds = math.NaN() }, "estimated_seconds", true},
		{"estimated_seconds +Inf", func(v *T) { v.EstimatedSeconds = math.Inf(1) }, "estimated_seconds", true},
		{"estimated_seconds zero and late ok", func(v *T) { v.EstimatedSeconds, v.MeetsDeadline = 0, false }, "", false},
		{"rationale empty", func(v *T) { v.Rationale = "" }, "rationale", false},
		{"rationale too long", func(v *T) { v.Rationale = repeat("r", MaxTextBytes+1) }, "rationale", false},
		{"rationale NUL", func(v *T) { v.Rationale = "a\x00" }, "rationale", false},
		{"rationale bad UTF-8", func(v *T) { v.Rationale = "\xff" }, "rationale", true},
		{"rationale multi-line ok", func(v *T) { v.Rationale = "line 1\nline 2 — ok" }, "", false},
		{"nonce empty ok (a plan of the earlier form)", func(v *T) { v.Nonce = "" }, "", false},
		{"nonce too short", func(v *T) { v.Nonce = "AAECAwQFBgcICQo" }, "nonce", false},
		{"nonce too long", func(v *T) { v.Nonce = repeat("A", 65) }, "nonce", false},
		{"nonce padding", func(v *T) { v.Nonce = "AAECAwQFBgcICQoLDA0ODw==" }, "nonce", false},
		{"nonce standard base64", func(v *T) { v.Nonce = "AAECAwQFBgcICQoL+/0ODw" }, "nonce", false},
		{"planned_cost omitted ok", func(v *T) { v.PlannedCost = 0 }, "", false},
		{"planned_cost negative", func(v *T) { v.PlannedCost = -0.01 }, "planned_cost", false},
		{"planned_cost NaN", func(v *T) { v.PlannedCost = math.NaN() }, "planned_cost", true},
		{"planned_cost over MaxCost", func(v *T) { v.PlannedCost = MaxCost * 2 }, "planned_cost", false},
	}
	rules = append(rules, fleetIDRules(func(v *T, s string) { v.FleetID = s })...)
	rules = append(rules, nameRules("template", func(v *T, s string) { v.Template = s })...)
	rules = append(rules, nameRules("profile", func(v *T, s string) { v.Profile = s })...)
	rules = append(rules, nameRules("recipe", func(v *T, s string) { v.Recipe = s })...)
	checkRules(t, validFleetPlanned, DecodeFleetPlanned, func(v *T) *Header { return &v.Header }, rules)
}

func TestFleetLaunchedRules(t *testing.T) {
	type T = FleetLaunched
	many := func(n int) []Instance {
		out := make([]Instance, n)
		for i := range out {
			out[i] = Instance{ID: fmt.Sprintf("i-%08x", i), InstanceType: "m3.medium", SSHEndpoint: "127.0.0.1:22", LaunchedAt: t1}
		}
		return out
	}
	rules := []rule[T]{
		{"plan_revision zero", func(v *T) { v.PlanRevision = 0 }, "plan_revision", false},
		{"template upper", func(v *T) { v.Template = "Batch" }, "template", false},
		{"template omitted ok", func(v *T) { v.Template = "" }, "", false},
		{"params bad key", func(v *T) { v.Params["$X"] = "" }, "params", false},
		{"deadline_at zero", func(v *T) { v.DeadlineAt = time.Time{} }, "deadline_at", false},
		{"instances none", func(v *T) { v.Instances = nil }, "instances", false},
		{"instances over MaxInstances", func(v *T) { v.Instances = many(MaxInstances + 1) }, "instances", false},
		{"instances MaxInstances ok", func(v *T) { v.Instances = many(MaxInstances) }, "", false},
		{"instances duplicate id", func(v *T) { v.Instances[2].ID = v.Instances[0].ID }, "instances[2]", false},
		{"instance_type bad", func(v *T) { v.Instances[1].InstanceType = "medium" }, "instances[1].instance_type", false},
		{"private_ip bad", func(v *T) { v.Instances[0].PrivateIP = "10.0.0.300" }, "instances[0].private_ip", false},
		{"private_ip zone", func(v *T) { v.Instances[0].PrivateIP = "fe80::1%eth0" }, "instances[0].private_ip", false},
		{"private_ip host name", func(v *T) { v.Instances[0].PrivateIP = "ip-10-0-0-1" }, "instances[0].private_ip", false},
		{"private_ip ipv6 ok", func(v *T) { v.Instances[0].PrivateIP = "fd00::17" }, "", false},
		{"launched_at zero", func(v *T) { v.Instances[2].LaunchedAt = time.Time{} }, "instances[2].launched_at", false},
		{"market unknown", func(v *T) { v.Instances[0].Market = "reserved" }, "instances[0].market", false},
		{"market omitted ok", func(v *T) { v.Instances[0].Market = "" }, "", false},
		{"hourly_price negative", func(v *T) { v.Instances[1].HourlyPrice = -1 }, "instances[1].hourly_price", false},
		{"hourly_price +Inf", func(v *T) { v.Instances[1].HourlyPrice = math.Inf(1) }, "instances[1].hourly_price", true},
		{"planned_instance_type bad", func(v *T) { v.PlannedInstanceType = "medium" }, "planned_instance_type", false},
		{"planned_count negative", func(v *T) { v.PlannedCount = -1 }, "planned_count", false},
		{"planned_count over MaxInstances", func(v *T) { v.PlannedCount = MaxInstances + 1 }, "planned_count", false},
		{"planned fields omitted ok", func(v *T) { v.PlannedInstanceType, v.PlannedCount, v.Fallback = "", 0, "" }, "", false},
		{"fallback too long", func(v *T) { v.Fallback = repeat("f", MaxTextBytes+1) }, "fallback", false},
	}
	rules = append(rules, fleetIDRules(func(v *T, s string) { v.FleetID = s })...)
	rules = append(rules, nameRules("recipe", func(v *T, s string) { v.Recipe = s })...)
	rules = append(rules, keyNameRules(func(v *T, s string) { v.KeyName = s })...)
	rules = append(rules, hostKeyRules(func(v *T, s string) { v.HostKey = s })...)
	rules = append(rules, instanceIDRules("instances[1].id", func(v *T, s string) { v.Instances[1].ID = s })...)
	rules = append(rules, endpointRules("instances[2].ssh_endpoint", func(v *T, s string) { v.Instances[2].SSHEndpoint = s })...)
	checkRules(t, validFleetLaunched, DecodeFleetLaunched, func(v *T) *Header { return &v.Header }, rules)
}

func TestFleetBootstrappedRules(t *testing.T) {
	type T = FleetBootstrapped
	rules := []rule[T]{
		{"template upper", func(v *T) { v.Template = "X" }, "template", false},
		{"params none ok", func(v *T) { v.Params = nil }, "", false},
		{"params bad key", func(v *T) { v.Params["$X"] = "" }, "params", false},
		{"params value NUL", func(v *T) { v.Params["QUALITY"] = "\x00" }, "params.QUALITY", false},
		{"params value too long", func(v *T) { v.Params["QUALITY"] = repeat("v", MaxParamValueBytes+1) }, "params.QUALITY", false},
		{"params too many", func(v *T) {
			for i := range MaxParams {
				v.Params[fmt.Sprintf("P%d", i)] = "x"
			}
		}, "params", false},
		{"deadline_at zero", func(v *T) { v.DeadlineAt = time.Time{} }, "deadline_at", false},
		{"instances none", func(v *T) { v.Instances = nil }, "instances", false},
		{"instances over MaxInstances", func(v *T) {
			v.Instances = make([]InstanceResult, MaxInstances+1)
			for i := range v.Instances {
				v.Instances[i] = InstanceResult{ID: fmt.Sprintf("i-%08x", i), SSHEndpoint: "h:1", OK: true}
			}
		}, "instances", false},
		{"instances duplicate id", func(v *T) { v.Instances[1].ID = v.Instances[0].ID }, "instances[1]", false},
		{"all failed ok", func(v *T) { v.Instances[0].OK, v.Instances[0].Error = false, "unreachable" }, "", false},
		{"ok with error", func(v *T) { v.Instances[0].Error = "boom" }, "instances[0].error", false},
		{"failed without error", func(v *T) { v.Instances[1].Error = "" }, "instances[1].error", false},
		{"error too long", func(v *T) { v.Instances[1].Error = repeat("e", MaxTextBytes+1) }, "instances[1].error", false},
		{"error NUL", func(v *T) { v.Instances[1].Error = "\x00" }, "instances[1].error", false},
		{"steps none ok", func(v *T) { v.Instances[0].Steps = nil }, "", false},
		{"steps too many", func(v *T) {
			v.Instances[0].Steps = make([]StepResult, MaxSteps+1)
			for i := range v.Instances[0].Steps {
				v.Instances[0].Steps[i] = StepResult{Name: "s"}
			}
		}, "instances[0].steps", false},
		{"step name empty", func(v *T) { v.Instances[0].Steps[1].Name = "" }, "instances[0].steps[1].name", false},
		{"step name control", func(v *T) { v.Instances[0].Steps[1].Name = "a\tb" }, "instances[0].steps[1].name", false},
		{"step name too long", func(v *T) { v.Instances[0].Steps[1].Name = repeat("n", MaxStepNameBytes+1) }, "instances[0].steps[1].name", false},
		{"step name unicode ok", func(v *T) { v.Instances[0].Steps[1].Name = "démarrer le travail" }, "", false},
		{"exit_code below -1", func(v *T) { v.Instances[1].Steps[0].ExitCode = -2 }, "instances[1].steps[0].exit_code", false},
		{"exit_code over 255", func(v *T) { v.Instances[1].Steps[0].ExitCode = 256 }, "instances[1].steps[0].exit_code", false},
		{"exit_code -1 ok", func(v *T) { v.Instances[1].Steps[0].ExitCode = -1 }, "", false},
		{"duration_ms negative", func(v *T) { v.Instances[0].Steps[0].DurationMS = -1 }, "instances[0].steps[0].duration_ms", false},
		{"duration_ms over max", func(v *T) { v.Instances[0].Steps[0].DurationMS = MaxDuration.Milliseconds() + 1 }, "instances[0].steps[0].duration_ms", false},
		{"output_tail too many lines", func(v *T) { v.Instances[0].Steps[0].OutputTail = make([]string, MaxTailLines+1) }, "instances[0].steps[0].output_tail", false},
		{"output_tail 50 lines ok", func(v *T) { v.Instances[0].Steps[0].OutputTail = make([]string, MaxTailLines) }, "", false},
		{"output_tail line too long", func(v *T) {
			v.Instances[0].Steps[1].OutputTail = []string{"a", repeat("l", MaxTextBytes+1)}
		}, "instances[0].steps[1].output_tail[1]", false},
		{"output_tail line NUL", func(v *T) { v.Instances[1].Steps[0].OutputTail[0] = "\x00" }, "instances[1].steps[0].output_tail[0]", false},
		{"output_tail line bad UTF-8", func(v *T) { v.Instances[1].Steps[0].OutputTail[0] = "\xfe" }, "instances[1].steps[0].output_tail[0]", true},
	}
	rules = append(rules, fleetIDRules(func(v *T, s string) { v.FleetID = s })...)
	rules = append(rules, nameRules("recipe", func(v *T, s string) { v.Recipe = s })...)
	rules = append(rules, keyNameRules(func(v *T, s string) { v.KeyName = s })...)
	rules = append(rules, hostKeyRules(func(v *T, s string) { v.HostKey = s })...)
	rules = append(rules, instanceIDRules("instances[0].id", func(v *T, s string) { v.Instances[0].ID = s })...)
	rules = append(rules, endpointRules("instances[1].ssh_endpoint", func(v *T, s string) { v.Instances[1].SSHEndpoint = s })...)
	checkRules(t, validFleetBootstrapped, DecodeFleetBootstrapped, func(v *T) *Header { return &v.Header }, rules)
}

func TestTaskReportedRules(t *testing.T) {
	type T = TaskReported
	rules := []rule[T]{
		{"task_id empty", func(v *T) { v.TaskID = "" }, "task_id", false},
		{"task_id too long", func(v *T) { v.TaskID = repeat("t", MaxTaskIDBytes+1) }, "task_id", false},
		{"task_id 256 bytes ok", func(v *T) { v.TaskID = repeat("t", MaxTaskIDBytes) }, "", false},
		{"task_id escape sequence", func(v *T) { v.TaskID = "\x1b[31mred" }, "task_id", false},
		{"task_id newline", func(v *T) { v.TaskID = "a\nb" }, "task_id", false},
		{"task_id NUL", func(v *T) { v.TaskID = "a\x00" }, "task_id", false},
		{"task_id unicode ok", func(v *T) { v.TaskID = "données/файл 1.csv" }, "", false},
		{"outcome empty", func(v *T) { v.Outcome = "" }, "outcome", false},
		{"outcome timed_out", func(v *T) { v.Outcome = OutcomeTimedOut }, "outcome", false},
		{"outcome upper", func(v *T) { v.Outcome = "SUCCEEDED" }, "outcome", false},
		{"outcome succeeded ok", func(v *T) { v.Outcome = OutcomeSucceeded }, "", false},
		{"duration_ms negative", func(v *T) { v.DurationMS = -1 }, "duration_ms", false},
		{"duration_ms over max", func(v *T) { v.DurationMS = MaxDuration.Milliseconds() + 1 }, "duration_ms", false},
		{"duration_ms zero ok", func(v *T) { v.DurationMS = 0 }, "", false},
		{"detail too long", func(v *T) { v.Detail = repeat("d", MaxTextBytes+1) }, "detail", false},
		{"detail NUL", func(v *T) { v.Detail = "\x00" }, "detail", false},
		{"detail empty ok", func(v *T) { v.Detail = "" }, "", false},
		{"kind unknown", func(v *T) { v.Kind = "finished" }, "kind", false},
		{"exit_code on a task", func(v *T) { v.ExitCode = ptr(1) }, "exit_code", false},
	}
	rules = append(rules, fleetIDRules(func(v *T, s string) { v.FleetID = s })...)
	rules = append(rules, instanceIDRules("instance_id", func(v *T, s string) { v.InstanceID = s })...)
	checkRules(t, validTaskReported, DecodeTaskReported, func(v *T) *Header { return &v.Header }, rules)
}

// TestExitReportRules: an exit report names its start step and carries the exit code,
// with an outcome that agrees with it.
func TestExitReportRules(t *testing.T) {
	type T = TaskReported
	rules := []rule[T]{
		{"exit_code missing", func(v *T) { v.ExitCode = nil }, "exit_code", false},
		{"exit_code negative", func(v *T) { v.ExitCode = ptr(-1) }, "exit_code", false},
		{"exit_code over 255", func(v *T) { v.ExitCode = ptr(256) }, "exit_code", false},
		{"exit 0 but failed", func(v *T) { v.ExitCode = ptr(0) }, "outcome", false},
		{"exit 2 but succeeded", func(v *T) { v.ExitCode, v.Outcome = ptr(2), OutcomeSucceeded }, "outcome", false},
		{"exit 0 succeeded ok", func(v *T) { v.ExitCode, v.Outcome = ptr(0), OutcomeSucceeded }, "", false},
		{"exit 255 ok", func(v *T) { v.ExitCode = ptr(255) }, "", false},
		{"step name empty", func(v *T) { v.TaskID = "" }, "task_id", false},
	}
	checkRules(t, validExitReport, DecodeTaskReported, func(v *T) *Header { return &v.Header }, rules)
}

func ptr[V any](v V) *V { return &v }

func TestJobFinishedRules(t *testing.T) {
	type T = JobFinished
	rules := []rule[T]{
		{"template upper", func(v *T) { v.Template = "X" }, "template", false},
		{"outcome empty", func(v *T) { v.Outcome = "" }, "outcome", false},
		{"outcome unknown", func(v *T) { v.Outcome = "stalled" }, "outcome", false},
		{"outcome timed_out ok", func(v *T) { v.Outcome = OutcomeTimedOut }, "", false},
		{"outcome cancelled ok", func(v *T) { v.Outcome = OutcomeCancelled }, "", false},
		{"reason missing on cancel", func(v *T) { v.Outcome, v.Reason = OutcomeCancelled, "" }, "reason", false},
		{"reason missing on failure", func(v *T) { v.Reason = "" }, "reason", false},
		{"reason missing on timeout", func(v *T) { v.Outcome, v.Reason = OutcomeTimedOut, "" }, "reason", false},
		{"reason missing on success ok", func(v *T) { v.Outcome, v.Reason, v.FailingInstance = OutcomeSucceeded, "", "" }, "", false},
		{"reason too long", func(v *T) { v.Reason = repeat("r", MaxTextBytes+1) }, "reason", false},
		{"reason NUL", func(v *T) { v.Reason = "\x00" }, "reason", false},
		{"failing_instance not listed", func(v *T) { v.FailingInstance = instanceC }, "failing_instance", false},
		{"failing_instance bad", func(v *T) { v.FailingInstance = "web-1" }, "failing_instance", false},
		{"failing_instance none ok", func(v *T) { v.FailingInstance = "" }, "", false},
		{"log_tail too many", func(v *T) { v.LogTail = make([]string, MaxTailLines+1) }, "log_tail", false},
		{"log_tail line too long", func(v *T) { v.LogTail[2] = repeat("x", MaxTextBytes+1) }, "log_tail[2]", false},
		{"log_tail line NUL", func(v *T) { v.LogTail[0] = "\x00" }, "log_tail[0]", false},
		{"instances over MaxInstances", func(v *T) {
			v.FailingInstance = ""
			v.Instances = make([]InstanceRef, MaxInstances+1)
			for i := range v.Instances {
				v.Instances[i] = InstanceRef{ID: fmt.Sprintf("i-%08x", i), SSHEndpoint: "h:1"}
			}
		}, "instances", false},
		{"instances duplicate id", func(v *T) { v.Instances[1].ID = v.Instances[0].ID; v.FailingInstance = "" }, "instances[1]", false},
		{"instances none ok", func(v *T) {
			v.Instances, v.FailingInstance, v.HostKey, v.KeyName = nil, "", "", ""
		}, "", false},
		{"no instances, host_key NUL", func(v *T) {
			v.Instances, v.FailingInstance, v.HostKey = nil, "", "\x00"
		}, "host_key", false},
		{"logs none ok", func(v *T) { v.Logs = nil }, "", false},
		{"logs empty path", func(v *T) { v.Logs[0] = "" }, "logs[0]", false},
		{"logs absolute", func(v *T) { v.Logs = append(v.Logs, "/var/log/syslog") }, "logs[1]", false},
		{"logs dot-dot", func(v *T) { v.Logs[0] = "logs/../../etc/passwd" }, "logs[0]", false},
		{"logs dot-dot alone", func(v *T) { v.Logs[0] = ".." }, "logs[0]", false},
		{"logs NUL", func(v *T) { v.Logs[0] = "a\x00b" }, "logs[0]", false},
		{"logs path too long", func(v *T) { v.Logs[0] = repeat("p", MaxLogPathBytes+1) }, "logs[0]", false},
		{"logs path at limit ok", func(v *T) { v.Logs[0] = repeat("p", MaxLogPathBytes) }, "", false},
		{"logs dots in names ok", func(v *T) { v.Logs[0] = "./logs/a..b/.x.log" }, "", false},
		{"logs shell metacharacters ok", func(v *T) { v.Logs[0] = "logs/$(id) 'a'.log" }, "", false},
		{"logs too many", func(v *T) { v.Logs = make([]string, MaxLogs+1); fill(v.Logs, "l.log") }, "logs", false},
		{"logs at limit ok", func(v *T) { v.Logs = make([]string, MaxLogs); fill(v.Logs, "l.log") }, "", false},
		{"tasks_succeeded negative", func(v *T) { v.TasksSucceeded = -1 }, "tasks_succeeded", false},
		{"tasks_succeeded over MaxItems", func(v *T) { v.TasksSucceeded = MaxItems + 1 }, "tasks_succeeded", false},
		{"tasks_failed negative", func(v *T) { v.TasksFailed = -1 }, "tasks_failed", false},
		{"tasks_failed over MaxItems", func(v *T) { v.TasksFailed = MaxItems + 1 }, "tasks_failed", false},
	}
	rules = append(rules, fleetIDRules(func(v *T, s string) { v.FleetID = s })...)
	rules = append(rules, keyNameRules(func(v *T, s string) { v.KeyName = s })...)
	rules = append(rules, hostKeyRules(func(v *T, s string) { v.HostKey = s })...)
	rules = append(rules, instanceIDRules("instances[0].id", func(v *T, s string) { v.Instances[0].ID = s })...)
	rules = append(rules, endpointRules("instances[1].ssh_endpoint", func(v *T, s string) { v.Instances[1].SSHEndpoint = s })...)
	checkRules(t, validJobFinished, DecodeJobFinished, func(v *T) *Header { return &v.Header }, rules)
}

func fill(s []string, v string) {
	for i := range s {
		s[i] = v
	}
}

func TestFleetTerminatedRules(t *testing.T) {
	type T = FleetTerminated
	ids := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("i-%08x", i)
		}
		return out
	}
	rules := []rule[T]{
		{"outcome unknown", func(v *T) { v.Outcome = "ok" }, "outcome", false},
		{"outcome succeeded ok", func(v *T) { v.Outcome, v.Reason = OutcomeSucceeded, "" }, "", false},
		{"outcome cancelled ok", func(v *T) { v.Outcome, v.Reason = OutcomeCancelled, "cancelled by ops" }, "", false},
		{"outcome cancelled without reason", func(v *T) { v.Outcome, v.Reason = OutcomeCancelled, "" }, "reason", false},
		{"reason NUL", func(v *T) { v.Reason = "\x00" }, "reason", false},
		{"reason too long", func(v *T) { v.Reason = repeat("r", MaxTextBytes+1) }, "reason", false},
		{"archives none ok", func(v *T) { v.Archives = nil }, "", false},
		{"archives over MaxInstances", func(v *T) {
			v.Archives = make([]Archive, MaxInstances+1)
			for i := range v.Archives {
				v.Archives[i] = Archive{InstanceID: instanceA, Bucket: "b-1", Key: "k"}
			}
		}, "archives", false},
		{"archive instance_id bad", func(v *T) { v.Archives[1].InstanceID = "i-x" }, "archives[1].instance_id", false},
		{"archive bucket bad", func(v *T) { v.Archives[0].Bucket = "Logs" }, "archives[0].bucket", false},
		{"archive key empty", func(v *T) { v.Archives[0].Key = "" }, "archives[0].key", false},
		{"archive key too long", func(v *T) { v.Archives[0].Key = repeat("k", MaxS3KeyBytes+1) }, "archives[0].key", false},
		{"archive key NUL", func(v *T) { v.Archives[0].Key = "a\x00" }, "archives[0].key", false},
		{"archive size negative", func(v *T) { v.Archives[1].SizeBytes = -1 }, "archives[1].size_bytes", false},
		{"archive size over 5 TiB", func(v *T) { v.Archives[1].SizeBytes = MaxArchiveBytes + 1 }, "archives[1].size_bytes", false},
		{"archive size zero ok", func(v *T) { v.Archives[1].SizeBytes = 0 }, "", false},
		{"terminated ids none ok", func(v *T) { v.TerminatedInstanceIDs = nil }, "", false},
		{"terminated ids over MaxInstances", func(v *T) { v.TerminatedInstanceIDs = ids(MaxInstances + 1) }, "terminated_instance_ids", false},
		{"terminated ids MaxInstances ok", func(v *T) { v.TerminatedInstanceIDs = ids(MaxInstances) }, "", false},
		{"terminated ids duplicate", func(v *T) { v.TerminatedInstanceIDs[1] = v.TerminatedInstanceIDs[0] }, "terminated_instance_ids[1]", false},
		{"instance_seconds negative", func(v *T) { v.InstanceSeconds = -1 }, "instance_seconds", false},
		{"instance_seconds too large", func(v *T) { v.InstanceSeconds = MaxInstanceSeconds + 1 }, "instance_seconds", false},
		{"instance_seconds NaN", func(v *T) { v.InstanceSeconds = math.NaN() }, "instance_seconds", true},
		{"cost negative", func(v *T) { v.Cost = -1 }, "cost", false},
		{"cost NaN", func(v *T) { v.Cost = math.NaN() }, "cost", true},
		{"planned_cost over MaxCost", func(v *T) { v.PlannedCost = MaxCost * 2 }, "planned_cost", false},
		{"costs omitted ok", func(v *T) { v.Cost, v.PlannedCost = 0, 0 }, "", false},
		{"instance_seconds zero ok", func(v *T) { v.InstanceSeconds = 0 }, "", false},
		{"archive failures none ok", func(v *T) { v.ArchiveFailures = nil }, "", false},
		{"archive failure instance_id bad", func(v *T) { v.ArchiveFailures[0].InstanceID = "i-x" }, "archive_failures[0].instance_id", false},
		{"archive failure error empty", func(v *T) { v.ArchiveFailures[0].Error = "" }, "archive_failures[0].error", false},
		{"archive failure error too long", func(v *T) { v.ArchiveFailures[0].Error = repeat("e", MaxTextBytes+1) }, "archive_failures[0].error", false},
		{"archive failure duplicate", func(v *T) {
			v.ArchiveFailures = append(v.ArchiveFailures, v.ArchiveFailures[0])
		}, "archive_failures[1]", false},
		{"archive failures over MaxInstances", func(v *T) {
			v.ArchiveFailures = make([]ArchiveFailure, MaxInstances+1)
			for i, id := range ids(MaxInstances + 1) {
				v.ArchiveFailures[i] = ArchiveFailure{InstanceID: id, Error: "e"}
			}
		}, "archive_failures", false},
		{"refused none ok", func(v *T) { v.Refused = nil }, "", false},
		{"refused instance_id bad", func(v *T) { v.Refused[1].InstanceID = "i-x" }, "refused[1].instance_id", false},
		{"refused reason unknown", func(v *T) { v.Refused[0].Reason = "mine" }, "refused[0].reason", false},
		{"refused reason empty", func(v *T) { v.Refused[0].Reason = "" }, "refused[0].reason", false},
		{"refused every reason ok", func(v *T) {
			v.Refused = []RefusedInstance{
				{InstanceID: "i-00000001", Reason: RefusedOtherFleet}, {InstanceID: "i-00000002", Reason: RefusedOtherStack},
				{InstanceID: "i-00000003", Reason: RefusedUntagged}, {InstanceID: "i-00000004", Reason: RefusedUnknown},
			}
		}, "", false},
		{"refused detail NUL", func(v *T) { v.Refused[0].Detail = "\x00" }, "refused[0].detail", false},
		{"refused duplicate", func(v *T) { v.Refused[1].InstanceID = v.Refused[0].InstanceID }, "refused[1]", false},
		{"refused over MaxInstances", func(v *T) {
			v.Refused = make([]RefusedInstance, MaxInstances+1)
			for i, id := range ids(MaxInstances + 1) {
				v.Refused[i] = RefusedInstance{InstanceID: id, Reason: RefusedUnknown}
			}
		}, "refused", false},
	}
	rules = append(rules, fleetIDRules(func(v *T, s string) { v.FleetID = s })...)
	rules = append(rules, instanceIDRules("terminated_instance_ids[0]", func(v *T, s string) { v.TerminatedInstanceIDs[0] = s })...)
	checkRules(t, validFleetTerminated, DecodeFleetTerminated, func(v *T) *Header { return &v.Header }, rules)
}

func TestValidateReportsEveryProblem(t *testing.T) {
	v := validJobSubmitted()
	v.JobID = "a b"
	v.Template = ""
	v.Work = WorkSource{}
	v.DeadlineSeconds = 0
	err := v.Validate()
	got := fieldsOfErr(err)
	want := []string{"job_id", "template", "work", "deadline_seconds"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("fields = %v, want %v (err: %v)", got, want, err)
	}
	if !strings.Contains(err.Error(), `job_id: must match [A-Za-z0-9._-]{1,64}, got "a b"`) {
		t.Fatalf("message does not say what was wrong and what was seen: %v", err)
	}
}

func TestValidateCapsTheErrorList(t *testing.T) {
	v := validFleetLaunched()
	v.Instances = make([]Instance, MaxInstances)
	for i := range v.Instances {
		v.Instances[i] = Instance{ID: fmt.Sprintf("bad-%d", i), InstanceType: "m3.medium", SSHEndpoint: "h:1", LaunchedAt: t1}
	}
	err := v.Validate()
	if n := len(FieldErrors(err)); n != maxReported {
		t.Fatalf("reported %d field errors, want %d", n, maxReported)
	}
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), fmt.Sprintf("%d more problems not shown", MaxInstances-maxReported)) {
		t.Fatalf("want the rest counted, got ...%s", err.Error()[max(0, len(err.Error())-200):])
	}
}

func TestValidateInstanceLost(t *testing.T) {
	type T = InstanceLost
	rules := []rule[T]{
		{"plan_revision zero", func(v *T) { v.PlanRevision = 0 }, "plan_revision", false},
		{"plan_revision over the most", func(v *T) { v.PlanRevision = MaxPlanRevision + 1 }, "plan_revision", false},
		{"cause unknown", func(v *T) { v.Cause = "bored" }, "cause", false},
		{"cause empty", func(v *T) { v.Cause = "" }, "cause", false},
		{"every cause ok", func(v *T) { v.Cause = LostStopped }, "", false},
		{"no notice deadline ok", func(v *T) { v.NoticeDeadline = time.Time{} }, "", false},
		{"detail NUL", func(v *T) { v.Detail = "\x00" }, "detail", false},
		{"detail too long", func(v *T) { v.Detail = repeat("d", MaxTextBytes+1) }, "detail", false},
		{"template bad", func(v *T) { v.Template = "a b" }, "template", false},
		{"host_key two keys", func(v *T) { v.HostKey = testHostKey + "\n" + otherHostKey }, "host_key", false},
		{"host_key empty ok", func(v *T) { v.HostKey = "" }, "", false},
		{"key_name empty", func(v *T) { v.KeyName = "" }, "key_name", false},
		{"log outside the login directory", func(v *T) { v.Logs = []string{"../../etc/shadow"} }, "logs[0]", false},
		{"log absolute", func(v *T) { v.Logs = []string{"/var/log/syslog"} }, "logs[0]", false},
		{"logs over the most", func(v *T) {
			v.Logs = make([]string, MaxLogs+1)
			for i := range v.Logs {
				v.Logs[i] = "l"
			}
		}, "logs", false},
	}
	rules = append(rules, fleetIDRules(func(v *T, s string) { v.FleetID = s })...)
	rules = append(rules, instanceIDRules("instance_id", func(v *T, s string) { v.InstanceID = s })...)
	checkRules(t, validInstanceLost, DecodeInstanceLost, func(v *T) *Header { return &v.Header }, rules)
}
