package recipe

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sortie-fleet/sortie/pkg/opsconfig"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/golden")

// Hostile parameter values: each would run a command if it were spliced into a shell unquoted.
var hostile = map[string]string{
	"semicolon": `"; rm -rf ~"`,
	"subst":     `$(touch pwned)`,
	"backtick":  "`touch pwned`",
	"quote":     `'; touch pwned; echo '`,
	"mixed":     `a'b"c$HOME\d;|&<>*?~!{x} $(touch pwned) ` + "`touch pwned`",
}

// sample loads testdata/sample.yaml's recipe through opsconfig, as services do.
func sample(t *testing.T) opsconfig.Recipe {
	t.Helper()
	c, err := opsconfig.Load(filepath.Join("testdata", "sample.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Recipe("sample")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fakePresign returns a URL shaped like an S3 presigned one (with characters sh treats specially).
func fakePresign(bucket, key string) (string, error) {
	return fmt.Sprintf("https://s3.test/%s/%s?X-Amz-Expires=300&X-Amz-Signature=abc123", bucket, url.PathEscape(key)), nil
}

// format renders steps for a golden file.
func format(steps []Step) string {
	var b strings.Builder
	for _, s := range steps {
		rerun := ""
		if !s.Rerun {
			rerun = ", not rerun"
		}
		fmt.Fprintf(&b, "== %s (%s%s)\n$ %s\n", s.Name, s.Kind, rerun, s.Command)
		if s.Redacted != s.Command {
			fmt.Fprintf(&b, "redacted: %s\n", s.Redacted)
		}
		if s.Stdin != nil {
			fmt.Fprintf(&b, "stdin: %q\n", s.Stdin)
		}
		if s.Log != "" {
			fmt.Fprintf(&b, "log: %s\nstderr: %s\n", s.Log, s.Stderr)
		}
	}
	return b.String()
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	file := filepath.Join("testdata", "golden", name+".txt")
	if *update {
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (check, then go test -update):\n--- got\n%s\n--- want\n%s", file, got, want)
	}
}

// TestRenderGolden pins the exact commands of every step kind, for plain and hostile values.
func TestRenderGolden(t *testing.T) {
	r := sample(t)
	cases := map[string]struct {
		params map[string]string
		env    RenderEnv
	}{
		"plain": {params: map[string]string{"bucket": "data", "p": "hello world", "note": "a note"}},
		"wget":  {params: map[string]string{"bucket": "data", "p": "x", "who": "bob"}, env: RenderEnv{Fetcher: FetcherWget}},
	}
	for name, v := range hostile {
		cases["hostile-"+name] = struct {
			params map[string]string
			env    RenderEnv
		}{params: map[string]string{"bucket": "data", "p": v}}
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			env := tc.env
			env.Presign = fakePresign
			steps, err := Render(r, tc.params, env)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, name, format(steps))
			if !strings.HasPrefix(name, "hostile-") {
				return
			}
			// Independently of the golden file: the run step is printf and p in single quotes,
			// each ' written as '"'"'.
			want := "printf %s '" + strings.ReplaceAll(tc.params["p"], "'", `'"'"'`) + "'"
			if steps[2].Name != "echo" || steps[2].Command != want {
				t.Errorf("run step %s = %q, want %q", steps[2].Name, steps[2].Command, want)
			}
		})
	}
}

// TestRenderDefaultDemoGolden pins the commands `sortie dev` sends for the embedded demo recipe.
func TestRenderDefaultDemoGolden(t *testing.T) {
	r, err := opsconfig.Default().Recipe("demo-worker")
	if err != nil {
		t.Fatal(err)
	}
	steps, err := Render(r, map[string]string{"bucket": "sortie-demo-data", "queue": "sortie-demo-work"}, RenderEnv{})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "default-demo-worker", format(steps))
}

// TestRenderDefaultAnsibleGolden pins the commands of the embedded ansible recipe and
// refuses bundle and playbook names that could leave their directory or the bucket's prefix.
func TestRenderDefaultAnsibleGolden(t *testing.T) {
	r, err := opsconfig.Default().Recipe("ansible")
	if err != nil {
		t.Fatal(err)
	}
	steps, err := Render(r, map[string]string{"bundle": "web-1.2"}, RenderEnv{Presign: fakePresign})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "default-ansible", format(steps))
	for _, bad := range []map[string]string{
		{"bundle": "../secrets/keys"},
		{"bundle": "a b"},
		{"bundle": "x", "playbook": "../../etc/passwd.yml"},
		{"bundle": "x", "playbook": "site.yml; rm -rf ~"},
		{},
	} {
		if _, err := Render(r, bad, RenderEnv{Presign: fakePresign}); !errors.Is(err, ErrInvalidParam) {
			t.Errorf("params %v: error %v, want ErrInvalidParam", bad, err)
		}
	}
}

// TestFoldDefaultDemoGolden pins the commands the bootstrapper sends for the demo recipe:
// one session per step, the bookkeeping folded into the first and last.
func TestFoldDefaultDemoGolden(t *testing.T) {
	r, err := opsconfig.Default().Recipe("demo-worker")
	if err != nil {
		t.Fatal(err)
	}
	steps, err := Render(r, map[string]string{"bucket": "sortie-demo-data", "queue": "sortie-demo-work"}, RenderEnv{})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "default-demo-worker-folded", format(Fold(steps, testBookkeeping)))
	golden(t, "one-step-folded", format(Fold(steps[1:2], testBookkeeping)))
}

var testBookkeeping = Bookkeeping{
	MarkerPath: ".sortie/bootstrapped", MarkerContent: []byte("job=j fleet=f\n"),
	EnvPath: ".sortie/job.env", EnvContent: []byte("SORTIE_JOB_ID=j\nSORTIE_NOTE=it's $(x)\n"),
	Done: "sortie: already bootstrapped 0123abcd",
}

func TestStatusAndTailGolden(t *testing.T) {
	var b strings.Builder
	fmt.Fprintf(&b, "status worker:\n%s\n", StatusCommand("worker"))
	fmt.Fprintf(&b, "tail 50:\n%s\n", TailCommand("logs/my app's.log", 50))
	fmt.Fprintf(&b, "tail default of an option-like path:\n%s\n", TailCommand("-n9", 0))
	golden(t, "status-tail", b.String())
}

func TestResolveParams(t *testing.T) {
	r := sample(t)
	c := opsconfig.Default()
	demo, err := c.Recipe("demo-worker")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		recipe opsconfig.Recipe
		params map[string]string
		want   map[string]string
		errs   []ParamError // every problem, in order
	}{
		{
			name:   "defaults applied, optional without default empty",
			recipe: r, params: map[string]string{"bucket": "data", "p": "x"},
			want: map[string]string{"bucket": "data", "p": "x", "who": "world", "delay": "0", "code": "0", "note": ""},
		},
		{
			name:   "given values override defaults",
			recipe: r, params: map[string]string{"bucket": "data", "p": "", "who": "ann", "note": "hi there"},
			want: map[string]string{"bucket": "data", "p": "", "who": "ann", "delay": "0", "code": "0", "note": "hi there"},
		},
		{
			name:   "missing required",
			recipe: r, params: map[string]string{"p": "x"},
			errs: []ParamError{{"bucket", "required"}},
		},
		{
			name:   "unknown parameter",
			recipe: r, params: map[string]string{"bucket": "data", "p": "x", "ami": "ami-1"},
			errs: []ParamError{{"ami", "unknown parameter (the recipe takes bucket, code, delay, note, p, who)"}},
		},
		{
			name:   "pattern is anchored",
			recipe: r, params: map[string]string{"bucket": "data", "p": "x", "who": "bob; rm"},
			errs: []ParamError{{"who", `value "bob; rm" does not match [a-z]+`}},
		},
		{
			name:   "newline rejected",
			recipe: r, params: map[string]string{"bucket": "data", "p": "a\nb"},
			errs: []ParamError{{"p", "must not contain NUL or line breaks"}},
		},
		{
			name:   "carriage return rejected",
			recipe: r, params: map[string]string{"bucket": "data", "p": "a\rb"},
			errs: []ParamError{{"p", "must not contain NUL or line breaks"}},
		},
		{
			name:   "NUL rejected",
			recipe: r, params: map[string]string{"bucket": "data", "p": "a\x00b"},
			errs: []ParamError{{"p", "must not contain NUL or line breaks"}},
		},
		{
			name:   "max_len",
			recipe: r, params: map[string]string{"bucket": "data", "p": strings.Repeat("x", 201)},
			errs: []ParamError{{"p", "longer than 200 bytes (201)"}},
		},
		{
			name:   "max_len is inclusive",
			recipe: r, params: map[string]string{"bucket": "data", "p": strings.Repeat("x", 200)},
			want: map[string]string{"bucket": "data", "p": strings.Repeat("x", 200), "who": "world", "delay": "0", "code": "0", "note": ""},
		},
		{
			name:   "every problem at once",
			recipe: r, params: map[string]string{"zz": "1", "who": "", "code": "1234"},
			errs: []ParamError{
				{"zz", "unknown parameter (the recipe takes bucket, code, delay, note, p, who)"},
				{"bucket", "required"},
				{"code", `value "1234" does not match [0-9]{1,3}`},
				{"p", "required"},
				{"who", `value "" does not match [a-z]+`},
			},
		},
		{
			name:   "demo recipe rejects a hostile bucket",
			recipe: demo, params: map[string]string{"bucket": `"; rm -rf ~"`, "queue": "work"},
			errs: []ParamError{{"bucket", `value "\"; rm -rf ~\"" does not match [a-z0-9][a-z0-9.-]{1,61}[a-z0-9]`}},
		},
		{
			name:   "demo recipe rejects command substitution in the queue",
			recipe: demo, params: map[string]string{"bucket": "demo-data", "queue": "$(touch pwned)"},
			errs: []ParamError{{"queue", `value "$(touch pwned)" does not match [A-Za-z0-9_-]{1,80}(\.fifo)?`}},
		},
		{
			name:   "demo recipe accepts real names",
			recipe: demo, params: map[string]string{"bucket": "demo-data", "queue": "work.fifo"},
			want: map[string]string{"bucket": "demo-data", "queue": "work.fifo"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ResolveParams(tt.recipe, tt.params)
			if tt.errs == nil {
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("values = %q, want %q", got, tt.want)
				}
				return
			}
			if !errors.Is(err, ErrInvalidParam) {
				t.Fatalf("error %v does not wrap ErrInvalidParam", err)
			}
			var all []ParamError
			for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
				var pe *ParamError
				if !errors.As(e, &pe) {
					t.Fatalf("%v is not a *ParamError", e)
				}
				all = append(all, *pe)
			}
			if !reflect.DeepEqual(all, tt.errs) {
				t.Errorf("errors =\n%q\nwant\n%q", all, tt.errs)
			}
			if _, err := Render(tt.recipe, tt.params, RenderEnv{Presign: fakePresign}); !errors.Is(err, ErrInvalidParam) {
				t.Errorf("Render error = %v, want the same parameter errors", err)
			}
		})
	}
}

func TestRenderErrors(t *testing.T) {
	r := sample(t)
	ok := map[string]string{"bucket": "data", "p": "x"}
	failPresign := func(string, string) (string, error) { return "", errors.New("no credentials") }
	tests := []struct {
		name   string
		recipe opsconfig.Recipe
		env    RenderEnv
		want   string
	}{
		{"fetch without presigner", r, RenderEnv{}, `rendering step 0 "tool": fetch step needs RenderEnv.Presign`},
		{"presign fails", r, RenderEnv{Presign: failPresign}, `presigning s3://data/tools/world/tool.sh: no credentials`},
		{"presigned URL not http", r, RenderEnv{Presign: func(string, string) (string, error) { return "-K/etc/passwd", nil }},
			`presigned URL for s3://data/tools/world/tool.sh is not http(s)`},
		{"unknown fetcher", r, RenderEnv{Presign: fakePresign, Fetcher: "aria2c"}, `unknown fetcher "aria2c"`},
		{"two kinds in one step", opsconfig.Recipe{Steps: []opsconfig.Step{{Name: "x", Run: &opsconfig.Run{Argv: []string{"a"}},
			Start: &opsconfig.Start{Argv: []string{"b"}}}}}, RenderEnv{}, "must have exactly one of"},
		{"empty argv", opsconfig.Recipe{Steps: []opsconfig.Step{{Name: "x", Run: &opsconfig.Run{}}}}, RenderEnv{}, "empty argv"},
		{"step name escaping the state dir", opsconfig.Recipe{Steps: []opsconfig.Step{{Name: "../x", Start: &opsconfig.Start{Argv: []string{"b"}}}}},
			RenderEnv{}, `invalid step name "../x"`},
		{"undeclared reference", opsconfig.Recipe{Steps: []opsconfig.Step{{Name: "x", Run: &opsconfig.Run{Argv: []string{"{{y}}"}}}}},
			RenderEnv{}, `unknown parameter "y"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			params := ok
			if tt.recipe.Params == nil {
				params = nil
			}
			_, err := Render(tt.recipe, params, tt.env)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Render error = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		out  string
		want Status
		err  bool
	}{
		{out: "running 4242\n", want: Status{State: StateRunning, PID: 4242}},
		{out: "exited 0\n", want: Status{State: StateExited}},
		{out: "exited 137", want: Status{State: StateExited, ExitCode: 137}},
		{out: "dead\n", want: Status{State: StateDead}},
		{out: "starting\n", want: Status{State: StateStarting}},
		{out: "not-started\n", want: Status{State: StateNotStarted}},
		{out: "", err: true},
		{out: "exited\n", err: true}, // exit_code file empty
		{out: "running abc", err: true},
		{out: "dead 1", err: true},
		{out: "sh: 1: kill: oops", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.out, func(t *testing.T) {
			got, err := ParseStatus(tt.out)
			if (err != nil) != tt.err || got != tt.want {
				t.Errorf("ParseStatus(%q) = %+v, %v; want %+v, error %v", tt.out, got, err, tt.want, tt.err)
			}
		})
	}
}

func TestWorkloads(t *testing.T) {
	got, err := Workloads(sample(t), map[string]string{"bucket": "data", "p": "x", "who": "ann"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Workload{
		{Step: "worker", Log: "logs/ann/worker.log", Stderr: ".sortie/worker/stderr", StateDir: ".sortie/worker"},
		{Step: "defaultlog", Log: ".sortie/defaultlog/stdout.log", Stderr: ".sortie/defaultlog/stderr", StateDir: ".sortie/defaultlog"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Workloads = %+v, want %+v", got, want)
	}
	if _, err := Workloads(sample(t), map[string]string{"p": "x"}); !errors.Is(err, ErrInvalidParam) {
		t.Errorf("Workloads without the required bucket: %v, want ErrInvalidParam", err)
	}
}

func TestLongRejectedValueIsClipped(t *testing.T) {
	_, err := ResolveParams(sample(t), map[string]string{"bucket": strings.Repeat("B", 150), "p": "x"})
	if err == nil || !strings.Contains(err.Error(), strings.Repeat("B", 64)+"…") || strings.Contains(err.Error(), strings.Repeat("B", 65)) {
		t.Errorf("error %v: want the value clipped to 64 bytes", err)
	}
}

func TestPaths(t *testing.T) {
	got := []string{StateDir("w"), StartedPath("w"), PIDPath("w"), ExitCodePath("w"), StderrPath("w"), LogPath("w")}
	want := []string{".sortie/w", ".sortie/w/started", ".sortie/w/pid", ".sortie/w/exit_code", ".sortie/w/stderr", ".sortie/w/stdout.log"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("paths = %q, want %q", got, want)
	}
}

// reaching is a recipe whose every path, key and (built in code, past the config's
// validation, which refuses it) fetch bucket takes a parameter that accepts anything.
func reaching() opsconfig.Recipe {
	anything := opsconfig.Param{Pattern: `.*`}
	return opsconfig.Recipe{
		Params:       map[string]opsconfig.Param{"b": {Pattern: `.*`, Default: "tools"}, "k": {Pattern: `.*`, Default: "tool.sh"}, "dir": {Pattern: `.*`, Default: "bin"}, "log": anything},
		FetchBuckets: []string{"tools"},
		Steps: []opsconfig.Step{
			{Name: "tool", Fetch: &opsconfig.Fetch{Bucket: "{{b}}", Key: "tools/{{k}}", Path: "{{dir}}/tool"}},
			{Name: "conf", Upload: &opsconfig.Upload{Path: "{{dir}}/app.conf", Content: "x"}},
			{Name: "work", Start: &opsconfig.Start{Argv: []string{"true"}, Log: "logs/{{log}}worker.log"}},
		},
	}
}

// TestRenderRefusesOutsideBounds: after expansion no path or key leaves the login
// directory or bucket and no fetch reaches a bucket the recipe does not list or the
// secrets bucket; nothing is presigned when any step is refused.
func TestRenderRefusesOutsideBounds(t *testing.T) {
	const secrets = "stack-secrets"
	tests := []struct {
		name   string
		params map[string]string
		want   string // "" means rendered
	}{
		{"within bounds", nil, ""},
		{"the secrets bucket", map[string]string{"b": secrets}, "fetch from s3://stack-secrets: the stack's secrets bucket"},
		{"a bucket not listed", map[string]string{"b": "elsewhere"}, "fetch from s3://elsewhere: not one of the recipe's fetch_buckets [tools]"},
		{"key climbing out", map[string]string{"k": "../keys/login.pem"}, `fetch key "tools/../keys/login.pem": must not have a .. element`},
		{"path climbing out", map[string]string{"dir": "../../x"}, `path "../../x/tool": must not have a .. element`},
		{"absolute path", map[string]string{"dir": "/etc"}, `path "/etc/tool": must be relative`},
		{"home of another user", map[string]string{"dir": "~root"}, `path "~root/tool": must not start with ~`},
		{"upload only", map[string]string{"dir": "a/../.."}, `path "a/../../tool": must not have a .. element`},
		{"start log", map[string]string{"log": "../../"}, `path "logs/../../worker.log": must not have a .. element`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			presigned := 0
			env := RenderEnv{SecretsBucket: secrets, Presign: func(b, k string) (string, error) {
				presigned++
				return fakePresign(b, k)
			}}
			steps, err := Render(reaching(), tt.params, env)
			checkErr := Check(reaching(), tt.params, secrets)
			if tt.want == "" {
				if err != nil || checkErr != nil || len(steps) != 3 || presigned != 1 {
					t.Fatalf("Render = %d steps, %v (Check %v), %d presigned; want 3 steps, 1 presigned", len(steps), err, checkErr, presigned)
				}
				return
			}
			for _, e := range []error{err, checkErr} {
				if !errors.Is(e, ErrForbidden) || !strings.Contains(e.Error(), tt.want) {
					t.Errorf("error = %v, want ErrForbidden with %q", e, tt.want)
				}
			}
			if presigned != 0 {
				t.Errorf("%d URLs presigned, want none", presigned)
			}
		})
	}
}

// TestPathIsOneString: a path is cleaned once and that string is what every command of
// the step uses (upload's mkdir -p takes its directory, cat > and chmod the path itself).
func TestPathIsOneString(t *testing.T) {
	r := opsconfig.Recipe{Steps: []opsconfig.Step{
		{Name: "conf", Upload: &opsconfig.Upload{Path: "etc//app/./x.conf", Content: "x"}},
		{Name: "dash", Upload: &opsconfig.Upload{Path: "-rf", Content: "x"}},
		{Name: "work", Start: &opsconfig.Start{Argv: []string{"true"}, Log: "./logs//w.log"}},
	}}
	steps, err := Render(r, nil, RenderEnv{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"umask 077; mkdir -p etc/app && cat > etc/app/x.conf && chmod 0600 etc/app/x.conf",
		"umask 077; mkdir -p . && cat > ./-rf && chmod 0600 ./-rf",
	}
	for i, w := range want {
		if steps[i].Command != w {
			t.Errorf("step %s: %q, want %q", steps[i].Name, steps[i].Command, w)
		}
	}
	if steps[2].Log != "logs/w.log" || !strings.Contains(steps[2].Command, "> logs/w.log 2>") {
		t.Errorf("start log %q in %q, want logs/w.log in both", steps[2].Log, steps[2].Command)
	}
	ws, err := Workloads(r, nil)
	if err != nil || len(ws) != 1 || ws[0].Log != steps[2].Log {
		t.Errorf("Workloads = %+v, %v: the monitor and reaper must see the log path the step writes", ws, err)
	}
}
