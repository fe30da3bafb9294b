package opsconfig

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/sizing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func TestLoadValid(t *testing.T) {
	c, err := Load(filepath.Join("testdata", "valid.yaml"))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	batch, err := c.Template("batch")
	if err != nil {
		t.Fatal(err)
	}
	want := Template{
		AMI:             "ami-0abc1234",
		InstanceTypes:   []string{"m3.medium", "c5.large", "c5.xlarge"},
		Subnets:         []string{"subnet-0abc1234", "subnet-0def5678"},
		SecurityGroups:  []string{"sg-0abc1234"},
		InstanceProfile: "sortie-worker",
		KeyName:         "sortie-batch",
		User:            DefaultUser, // not in the file
		MinInstances:    2,
		MaxInstances:    50,
		TTL:             Duration(2 * time.Hour),
		HostKeys:        HostKeysDerived, // not in the file
		SSHAddress:      AddressPrivate,  // not in the file
	}
	if !reflect.DeepEqual(batch, want) {
		t.Errorf("template batch =\n%+v\nwant\n%+v", batch, want)
	}
	if gpu, _ := c.Template("gpu"); gpu.User != "ubuntu" || gpu.TTL.Std() != 90*time.Minute {
		t.Errorf("template gpu: user %q ttl %s, want ubuntu 1h30m", gpu.User, gpu.TTL.Std())
	}
	if gpu, _ := c.Template("gpu"); !gpu.InstanceHostKeys() || !gpu.PublicAddress() || batch.InstanceHostKeys() || batch.PublicAddress() {
		t.Errorf("host keys / address: gpu %s/%s, batch %s/%s; want instance/public, derived/private", gpu.HostKeys, gpu.SSHAddress, batch.HostKeys, batch.SSHAddress)
	}

	r, err := c.Recipe("ingest")
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Steps[0].Fetch; got == nil || got.Mode != 0o755 || got.Key != "tools/{{ prefix }}ingest" {
		t.Errorf("fetch step = %+v, want mode 0755 and the key as written", got)
	}
	if got := r.Steps[1].Upload; got == nil || got.Mode != 0 || got.Mode.OrDefault() != 0o600 || got.Content != "bucket={{bucket}}\n" {
		t.Errorf("upload step = %+v, want mode unset (default 0600)", got)
	}
	kinds := []string{}
	for _, s := range r.Steps {
		kinds = append(kinds, s.Kind())
	}
	if want := []string{KindFetch, KindUpload, KindRun, KindStart}; !reflect.DeepEqual(kinds, want) {
		t.Errorf("step kinds = %v, want %v", kinds, want)
	}
	if p := r.Params["prefix"]; p.Default != "in/" || p.Limit() != 200 || r.Params["bucket"].Limit() != DefaultParamMaxLen {
		t.Errorf("params = %+v", r.Params)
	}
}

func TestCandidates(t *testing.T) {
	c, err := Load(filepath.Join("testdata", "valid.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, template, profile string
		want                    []sizing.Candidate
		wantErr                 string
		wantUnknown             *UnknownNameError
	}{
		{
			name: "intersection in template order", template: "batch", profile: "files",
			want: []sizing.Candidate{
				{InstanceType: "m3.medium", ItemsPerMinute: 10, BootSeconds: 60, HourlyPrice: 0.067},
				{InstanceType: "c5.xlarge", ItemsPerMinute: 45, BootSeconds: 40, HourlyPrice: 0.17},
			},
		},
		{
			name: "a spot template is priced at the spot price, on demand where the profile has none", template: "batch-spot", profile: "files",
			want: []sizing.Candidate{
				{InstanceType: "m3.medium", ItemsPerMinute: 10, BootSeconds: 60, HourlyPrice: 0.02},
				{InstanceType: "c5.xlarge", ItemsPerMinute: 45, BootSeconds: 40, HourlyPrice: 0.17},
			},
		},
		{name: "no common type", template: "gpu", profile: "files",
			wantErr: `template "gpu" and profile "files" share no instance type (template: g5.xlarge)`},
		{name: "unknown template", template: "nope", profile: "files",
			wantErr: `unknown template "nope"`, wantUnknown: &UnknownNameError{Kind: "template", Name: "nope"}},
		{name: "unknown profile", template: "batch", profile: "nope",
			wantErr: `unknown profile "nope"`, wantUnknown: &UnknownNameError{Kind: "profile", Name: "nope"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.Candidates(tt.template, tt.profile)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				var u *UnknownNameError
				if isUnknown := errors.As(err, &u); isUnknown != (tt.wantUnknown != nil) ||
					(isUnknown && *u != *tt.wantUnknown) {
					t.Errorf("errors.As(*UnknownNameError) = %v, %+v; want %+v", isUnknown, u, tt.wantUnknown)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Candidates = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestUnknownNames(t *testing.T) {
	c := Default()
	_, errT := c.Template("x")
	_, errP := c.Profile("y")
	_, errR := c.Recipe("z")
	for _, tc := range []struct {
		err  error
		want UnknownNameError
		msg  string
	}{
		{errT, UnknownNameError{"template", "x"}, `unknown template "x"`},
		{errP, UnknownNameError{"profile", "y"}, `unknown profile "y"`},
		{errR, UnknownNameError{"recipe", "z"}, `unknown recipe "z"`},
	} {
		var u *UnknownNameError
		if !errors.As(tc.err, &u) || *u != tc.want || tc.err.Error() != tc.msg {
			t.Errorf("error %v: want *UnknownNameError %+v with message %q", tc.err, tc.want, tc.msg)
		}
	}
}

// TestValidateReportsEverything checks that Validate names every problem with its path, at once.
func TestValidateReportsEverything(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "invalid.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse(data)
	if err == nil {
		t.Fatal("Parse succeeded on invalid.yaml")
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("error does not wrap ErrInvalid: %v", err)
	}
	got := err.Error() + "\n"
	golden := filepath.Join("testdata", "invalid.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("Validate report differs from %s (run with -update after checking):\ngot:\n%s\nwant:\n%s", golden, got, want)
	}
}

// base is a minimal valid config; each case in TestParseErrors changes one thing.
const base = `
templates:
  t:
    ami: ami-0abc1234
    instance_types: [m3.medium]
    subnets: [subnet-0abc1234]
    security_groups: [sg-0abc1234]
    instance_profile: p
    key_name: k
    min_instances: 1
    max_instances: 1
    ttl: 1h
profiles:
  p:
    m3.medium: {items_per_minute: 1, boot_seconds: 0, hourly_price: 0}
recipes:
  r:
    params:
      v: {pattern: '[a-z]+'}
    steps:
      - name: s
        run: {argv: [echo, '{{v}}']}
`

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name    string
		old     string // replaced in base by new; empty: the whole document is new
		new     string
		want    string // a substring of the error
		invalid bool   // the error wraps ErrInvalid (a Validate problem, not a decode one)
	}{
		{name: "base is valid"},
		{name: "unknown top-level field", old: "profiles:", new: "extra: 1\nprofiles:", want: "field extra not found"},
		{name: "unknown template field", old: "ttl: 1h", new: "ttl: 1h\n    image: foo", want: "field image not found"},
		{name: "unknown step field", old: "- name: s", new: "- name: s\n        shell: x", want: "field shell not found"},
		{name: "unknown param field", old: "{pattern: '[a-z]+'}", new: "{pattern: '[a-z]+', regex: x}", want: "field regex not found"},
		{name: "bad ttl", old: "ttl: 1h", new: "ttl: soon", want: `duration "soon" must be a string such as "2h"`},
		{name: "ttl as number", old: "ttl: 1h", new: "ttl: 3600", want: `duration "3600"`},
		{name: "progress signal is valid", old: "run: {argv: [echo, '{{v}}']}", new: "start: {argv: [echo], log: w.log, progress: {signal: log, stall_window: 5m}}"},
		{name: "progress signal unknown", old: "run: {argv: [echo, '{{v}}']}", new: "start: {argv: [echo], progress: {signal: lines, stall_window: 5m}}",
			want: `recipes.r.steps[0].start.progress.signal: must be log (the log must grow) or tasks (the reported tasks must rise), got "lines"`, invalid: true},
		{name: "progress on tasks is valid", old: "run: {argv: [echo, '{{v}}']}", new: "start: {argv: [echo], progress: {signal: tasks, stall_window: 30s}}"},
		{name: "progress without a window", old: "run: {argv: [echo, '{{v}}']}", new: "start: {argv: [echo], progress: {signal: log}}",
			want: "recipes.r.steps[0].start.progress.stall_window: must be a positive duration", invalid: true},
		{name: "spot with fallbacks is valid", old: "ttl: 1h", new: "ttl: 1h\n    spot: {max_price: 0.05, fallback: [types, on-demand]}"},
		{name: "spot fallback unknown", old: "ttl: 1h", new: "ttl: 1h\n    spot: {fallback: [reserved]}", want: `templates.t.spot.fallback[0]: must be types or on-demand, got "reserved"`, invalid: true},
		{name: "spot fallback twice", old: "ttl: 1h", new: "ttl: 1h\n    spot: {fallback: [on-demand, on-demand]}", want: `templates.t.spot.fallback[1]: duplicate "on-demand"`, invalid: true},
		{name: "spot max price negative", old: "ttl: 1h", new: "ttl: 1h\n    spot: {max_price: -1}", want: "templates.t.spot.max_price: must be within", invalid: true},
		{name: "spot unknown field", old: "ttl: 1h", new: "ttl: 1h\n    spot: {bid: 1}", want: "field bid not found"},
		{name: "spot price negative", old: "hourly_price: 0}", new: "hourly_price: 0, spot_price: -0.1}", want: "profiles.p.m3.medium.spot_price: must be within", invalid: true},
		{name: "negative ttl", old: "ttl: 1h", new: "ttl: -1h", want: "templates.t.ttl: must be a positive duration", invalid: true},
		{name: "bad mode", old: "run: {argv: [echo, '{{v}}']}", new: "upload: {path: x, mode: 0999}", want: `mode "0999" must be octal digits`},
		{name: "mode too big", old: "run: {argv: [echo, '{{v}}']}", new: "upload: {path: x, mode: 17777}", want: `mode "17777"`},
		{name: "max below min", old: "max_instances: 1", new: "max_instances: 0\n    user: u", want: "templates.t.max_instances: must be ≥ min_instances (1), got 0", invalid: true},
		{name: "max over 1000", old: "max_instances: 1", new: "max_instances: 1001", want: "templates.t.max_instances: must be ≤ 1000, got 1001", invalid: true},
		{name: "ami", old: "ami-0abc1234", new: "ami-0ABC1234", want: `templates.t.ami: must match ^ami-[0-9a-f]{8,17}$, got "ami-0ABC1234"`, invalid: true},
		{name: "ami too short", old: "ami-0abc1234", new: "ami-0abc123", want: "templates.t.ami", invalid: true},
		{name: "subnet", old: "subnet-0abc1234", new: "subnet-0abc1234x", want: "templates.t.subnets[0]: must match", invalid: true},
		{name: "security group", old: "sg-0abc1234", new: "sg-zz", want: "templates.t.security_groups[0]: must match", invalid: true},
		{name: "template name", old: "  t:\n    ami", new: "  -t:\n    ami", want: `templates.-t: name "-t" must match`, invalid: true},
		{name: "recipe name too long", old: "  r:\n", new: "  " + strings.Repeat("r", 65) + ":\n", want: "must match ^[a-z0-9][a-z0-9._-]{0,63}$", invalid: true},
		{name: "unknown reference", old: "'{{v}}'", new: "'{{w}}'", want: `recipes.r.steps[0].run.argv[1]: unknown parameter "w" in "{{w}}"`, invalid: true},
		{name: "expression reference", old: "'{{v}}'", new: "'{{ .V }}'", want: `recipes.r.steps[0].run.argv[1]: {{ .V }} is not a parameter reference`, invalid: true},
		{name: "unclosed reference", old: "'{{v}}'", new: "'{{v'", want: `recipes.r.steps[0].run.argv[1]: unclosed {{`, invalid: true},
		{name: "rerun safe", old: "run: {argv: [echo, '{{v}}']}", new: "run: {argv: [echo, '{{v}}'], rerun: safe}"},
		{name: "rerun unsafe", old: "run: {argv: [echo, '{{v}}']}", new: "run: {argv: [echo, '{{v}}'], rerun: unsafe}"},
		{name: "rerun unknown", old: "run: {argv: [echo, '{{v}}']}", new: "run: {argv: [echo, '{{v}}'], rerun: yes}", want: `recipes.r.steps[0].run.rerun: must be safe or unsafe (default unsafe), got "yes"`, invalid: true},
		{name: "two documents", old: "", new: base + "---\ntemplates: {}\n", want: "more than one YAML document"},
		{name: "empty document", old: "", new: "", want: "empty document"},
		{name: "not a mapping", old: "", new: "- 1\n", want: "cannot unmarshal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := base
			switch {
			case tt.old != "":
				if !strings.Contains(base, tt.old) {
					t.Fatalf("base lacks %q", tt.old)
				}
				doc = strings.Replace(base, tt.old, tt.new, 1)
			case tt.name != "base is valid":
				doc = tt.new
			}
			_, err := Parse([]byte(doc))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse succeeded, want error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
			if errors.Is(err, ErrInvalid) != tt.invalid {
				t.Errorf("errors.Is(err, ErrInvalid) = %v, want %v", !tt.invalid, tt.invalid)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want os.ErrNotExist", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("templates: {t: {ami: x}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "templates.t.ami") {
		t.Fatalf("Load of an invalid file: %v, want the path and the problem", err)
	}
}

// TestDefault checks the embedded config `sortie dev` runs with, including that its demo
// profile plans the demo's 3 instances.
func TestDefault(t *testing.T) {
	c := Default()
	tpl, err := c.Template("demo")
	if err != nil {
		t.Fatal(err)
	}
	if tpl.AMI != "ami-0123456789abcdef0" || !reflect.DeepEqual(tpl.InstanceTypes, []string{"m3.medium", "c5.large"}) ||
		tpl.InstanceProfile != "sortie-worker" || tpl.KeyName != "sortie-dev" || tpl.User != "sortie" ||
		tpl.MinInstances != 1 || tpl.MaxInstances != 10 || tpl.TTL.Std() != 30*time.Minute {
		t.Errorf("template demo = %+v", tpl)
	}
	if c2 := Default(); c2 == c || &c2.Templates == &c.Templates {
		t.Error("Default returned a shared value")
	}

	plan := func(profile string, items int, deadline time.Duration) sizing.Result {
		t.Helper()
		cands, err := c.Candidates("demo", profile)
		if err != nil {
			t.Fatal(err)
		}
		res, err := sizing.Plan(sizing.Request{Items: items, Deadline: deadline, Candidates: cands,
			Min: tpl.MinInstances, Max: tpl.MaxInstances})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := plan("files", 202, 10*time.Minute); res.InstanceType != "m3.medium" || res.Count != 3 || !res.MeetsDeadline {
		t.Errorf("files profile, 202 items in 10 min: %+v, want 3 × m3.medium", res)
	}
	if res := plan("demo-fast", 202, 20*time.Second); res.InstanceType != "m3.medium" || res.Count != 3 || !res.MeetsDeadline {
		t.Errorf("demo-fast profile, 202 items in 20 s: %+v, want 3 × m3.medium", res)
	}

	r, err := c.Recipe("demo-worker")
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, s := range r.Steps {
		kinds = append(kinds, s.Kind())
	}
	if want := []string{KindUpload, KindRun, KindStart}; !reflect.DeepEqual(kinds, want) {
		t.Errorf("demo-worker step kinds = %v, want %v", kinds, want)
	}
	start := r.Steps[len(r.Steps)-1].Start
	if want := []string{"sortie-worker", "--bucket", "{{bucket}}", "--queue", "{{queue}}"}; !reflect.DeepEqual(start.Argv, want) {
		t.Errorf("demo-worker start argv = %q, want %q", start.Argv, want)
	}
	for name, value := range map[string]string{"bucket": "sortie-demo-data", "queue": "sortie-demo-work"} {
		re, err := r.Params[name].Regexp()
		if err != nil || !re.MatchString(value) || re.MatchString(value+"; rm -rf ~") || !r.Params[name].Required {
			t.Errorf("param %s: %+v does not require and accept %q only", name, r.Params[name], value)
		}
	}
	if !strings.Contains(string(DefaultYAML()), "demo-worker:") {
		t.Error("DefaultYAML lacks the demo recipe")
	}
}

func TestFileModeForms(t *testing.T) {
	for _, tc := range []struct {
		yaml, str string
		want      FileMode
	}{
		{"0644", "0644", 0o644}, {`"0755"`, "0755", 0o755}, {"0o700", "0700", 0o700}, {"644", "0644", 0o644}, {"4755", "4755", 0o4755},
	} {
		doc := strings.Replace(base, "run: {argv: [echo, '{{v}}']}", "upload: {path: x, mode: "+tc.yaml+"}", 1)
		c, err := Parse([]byte(doc))
		if err != nil {
			t.Fatalf("mode %s: %v", tc.yaml, err)
		}
		if got := c.Recipes["r"].Steps[0].Upload.Mode; got != tc.want || got.String() != tc.str {
			t.Errorf("mode %s = %s, want %s", tc.yaml, got, tc.want)
		}
	}
}

func TestExpandAndRefs(t *testing.T) {
	vals := map[string]string{"a": "1", "b_2": "{{a}}", "empty": ""}
	tests := []struct {
		in, want, wantErr string
		refs              []string
	}{
		{in: "plain", want: "plain"},
		{in: "{{a}}", want: "1", refs: []string{"a"}},
		{in: "x{{ a }}y{{a}}", want: "x1y1", refs: []string{"a", "a"}},
		{in: "{{b_2}}", want: "{{a}}", refs: []string{"b_2"}}, // values are not expanded again
		{in: "[{{empty}}]", want: "[]", refs: []string{"empty"}},
		{in: "a}}b", want: "a}}b"},
		{in: "{{zz}}", wantErr: `unknown parameter "zz"`, refs: []string{"zz"}},
		{in: "{{a", wantErr: "unclosed {{"},
		{in: "{{}}", wantErr: "{{}} is not a parameter reference"},
		{in: "{{a|b}}", wantErr: "{{a|b}} is not a parameter reference"},
		{in: "{{{a}}}", wantErr: "{{{a}} is not a parameter reference"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Expand(tt.in, vals)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Expand(%q) = %q, %v; want error %q", tt.in, got, err, tt.wantErr)
				}
			} else if err != nil || got != tt.want {
				t.Errorf("Expand(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
			refs, err := Refs(tt.in)
			if (err != nil) != (tt.wantErr != "" && !strings.HasPrefix(tt.wantErr, "unknown")) {
				t.Errorf("Refs(%q) error = %v", tt.in, err)
			}
			if err == nil && !reflect.DeepEqual(refs, tt.refs) {
				t.Errorf("Refs(%q) = %q, want %q", tt.in, refs, tt.refs)
			}
		})
	}
}

func TestCheckRelPath(t *testing.T) {
	tests := []struct {
		path, want string // want "" means accepted
	}{
		{"bin/tool", ""},
		{"a b/c.d", ""},
		{"./x", ""},
		{"x..y/..z", ""},
		{"-rf", ""},
		{"", "must not be empty"},
		{"/etc/passwd", "must be relative"},
		{"~/x", "must not start with ~"},
		{"~root", "must not start with ~"},
		{"..", ".. element"},
		{"../x", ".. element"},
		{"a/../../b", ".. element"},
		{"a/..", ".. element"},
		{"a\nb", "NUL or line breaks"},
		{"a\rb", "NUL or line breaks"},
		{"a\x00b", "NUL or line breaks"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			err := CheckRelPath(tt.path)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("CheckRelPath(%q) = %v, want nil", tt.path, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("CheckRelPath(%q) = %v, want an error containing %q", tt.path, err, tt.want)
			}
		})
	}
}

// TestCheckStack: no recipe may list the stack's secrets bucket, whatever else it lists.
func TestCheckStack(t *testing.T) {
	c, err := Load(filepath.Join("testdata", "valid.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckStack("sortie-secrets"); err != nil {
		t.Errorf("valid.yaml lists no secrets bucket, got %v", err)
	}
	err = c.CheckStack("acme-models")
	want := `recipes.ingest.fetch_buckets[1]: "acme-models" is the stack's secrets bucket: no recipe may fetch from it`
	if err == nil || err.Error() != want || !errors.Is(err, ErrInvalid) {
		t.Errorf("CheckStack = %v, want %q wrapping ErrInvalid", err, want)
	}
}
