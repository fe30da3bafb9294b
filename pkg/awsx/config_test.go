package awsx_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/sivchari/kumo"

	"github.com/sortie-fleet/sortie/pkg/awsx"
)

// request is what the recording proxy saw of one request.
type request struct {
	action   string            // STS query Action or X-Amz-Target
	params   map[string]string // form parameters (query protocol)
	keyID    string            // access key id in the SigV4 Authorization header
	token    string            // X-Amz-Security-Token
	hostPath string
}

// recorder is a reverse proxy in front of kumo that records every request.
type recorder struct {
	mu   sync.Mutex
	reqs []request
}

var credentialRE = regexp.MustCompile(`Credential=([^/]+)/`)

func (r *recorder) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(body))
		rec := request{
			action:   req.Header.Get("X-Amz-Target"),
			params:   map[string]string{},
			token:    req.Header.Get("X-Amz-Security-Token"),
			hostPath: req.URL.Path,
		}
		if m := credentialRE.FindStringSubmatch(req.Header.Get("Authorization")); m != nil {
			rec.keyID = m[1]
		}
		if strings.HasPrefix(req.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
			if vals, err := url.ParseQuery(string(body)); err == nil {
				for k := range vals {
					rec.params[k] = vals.Get(k)
				}
				rec.action = vals.Get("Action")
			}
		} else if len(body) > 0 {
			var m map[string]any
			if json.Unmarshal(body, &m) == nil {
				for k, v := range m {
					if s, ok := v.(string); ok {
						rec.params[k] = s
					}
				}
			}
		}
		r.mu.Lock()
		r.reqs = append(r.reqs, rec)
		r.mu.Unlock()
		next.ServeHTTP(w, req)
	})
}

func (r *recorder) matching(pred func(request) bool) []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []request
	for _, q := range r.reqs {
		if pred(q) {
			out = append(out, q)
		}
	}
	return out
}

// startRecordingKumo starts kumo behind a recording proxy and returns the proxy's URL.
func startRecordingKumo(t *testing.T) (string, *recorder) {
	t.Helper()
	srv := kumo.NewServer()
	t.Cleanup(srv.Close)
	target, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	proxy := httptest.NewServer(rec.wrap(httputil.NewSingleHostReverseProxy(target)))
	t.Cleanup(proxy.Close)
	return proxy.URL, rec
}

// isolateAWSEnv clears the SDK's environment so a developer's ~/.aws or shell can not leak
// into the test, then sets static test keys.
func isolateAWSEnv(t *testing.T) {
	t.Helper()
	none := filepath.Join(t.TempDir(), "none")
	for k, v := range map[string]string{
		"AWS_CONFIG_FILE":                     none,
		"AWS_SHARED_CREDENTIALS_FILE":         none,
		"AWS_PROFILE":                         "",
		"AWS_DEFAULT_PROFILE":                 "",
		"AWS_SESSION_TOKEN":                   "",
		"AWS_EC2_METADATA_DISABLED":           "true",
		"AWS_ENDPOINT_URL":                    "",
		"AWS_ENDPOINT_URL_S3":                 "",
		"AWS_ENDPOINT_URL_SQS":                "",
		"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "",
		"AWS_ACCESS_KEY_ID":                   "test",
		"AWS_SECRET_ACCESS_KEY":               "test",
		"AWS_REGION":                          "us-east-1",
		awsx.EnvRoleARN:                       "",
		awsx.EnvRoleExternalID:                "",
	} {
		t.Setenv(k, v)
	}
}

func TestLoadAssumesRole(t *testing.T) {
	endpoint, rec := startRecordingKumo(t)
	isolateAWSEnv(t)
	const roleARN = "arn:aws:iam::000000000000:role/sortie-planner"
	t.Setenv("AWS_ENDPOINT_URL", endpoint)
	t.Setenv(awsx.EnvRoleARN, roleARN)
	t.Setenv(awsx.EnvRoleExternalID, "ext-123")
	ctx := context.Background()

	cfg, err := awsx.Load(ctx, "planner")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		t.Fatalf("retrieving credentials: %v", err)
	}
	if creds.SessionToken == "" {
		t.Error("session token is empty, want temporary credentials")
	}
	if !creds.CanExpire || !creds.Expires.After(time.Now()) {
		t.Errorf("CanExpire=%v Expires=%v, want expiring credentials valid now", creds.CanExpire, creds.Expires)
	}
	if !strings.Contains(creds.Source, "AssumeRole") {
		t.Errorf("credential source %q does not mention AssumeRole", creds.Source)
	}
	if creds.AccessKeyID == "test" {
		t.Error("access key is the static one, want the assumed role's")
	}

	assumes := rec.matching(func(r request) bool { return r.action == "AssumeRole" })
	if len(assumes) != 1 {
		t.Fatalf("saw %d AssumeRole calls, want 1", len(assumes))
	}
	a := assumes[0]
	for k, want := range map[string]string{"RoleArn": roleARN, "RoleSessionName": "sortie-planner", "ExternalId": "ext-123"} {
		if a.params[k] != want {
			t.Errorf("AssumeRole %s = %q, want %q", k, a.params[k], want)
		}
	}
	if a.keyID != "test" {
		t.Errorf("AssumeRole was signed with key %q, want the base credentials (test)", a.keyID)
	}

	// A call made with the config is signed with the temporary credentials.
	client := sqs.NewFromConfig(cfg)
	if _, err := client.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String("awsx-assume-role")}); err != nil {
		t.Fatalf("CreateQueue with assumed credentials: %v", err)
	}
	if _, err := client.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String("awsx-assume-role")}); err != nil {
		t.Fatalf("GetQueueUrl with assumed credentials: %v", err)
	}
	sqsCalls := rec.matching(func(r request) bool { return strings.HasPrefix(r.action, "AmazonSQS.") })
	if len(sqsCalls) != 2 {
		t.Fatalf("saw %d SQS calls, want 2", len(sqsCalls))
	}
	for _, c := range sqsCalls {
		if c.token != creds.SessionToken || c.keyID != creds.AccessKeyID {
			t.Errorf("%s signed with key %q token %q, want the assumed role's %q %q",
				c.action, c.keyID, c.token, creds.AccessKeyID, creds.SessionToken)
		}
	}
	// The credentials are cached: the two calls did not assume the role again.
	if n := len(rec.matching(func(r request) bool { return r.action == "AssumeRole" })); n != 1 {
		t.Errorf("saw %d AssumeRole calls after two requests, want 1 (cached)", n)
	}
}

func TestLoadWithoutRoleUsesDefaultChain(t *testing.T) {
	endpoint, rec := startRecordingKumo(t)
	isolateAWSEnv(t)
	t.Setenv("AWS_ENDPOINT_URL_SQS", endpoint) // per-service endpoint only
	ctx := context.Background()

	cfg, err := awsx.Load(ctx, "reaper")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		t.Fatalf("retrieving credentials: %v", err)
	}
	if creds.AccessKeyID != "test" || creds.SessionToken != "" || creds.CanExpire {
		t.Errorf("credentials %+v, want the static environment keys", creds)
	}
	if cfg.BaseEndpoint != nil {
		t.Errorf("BaseEndpoint = %q, want unset (only the SQS endpoint is overridden)", *cfg.BaseEndpoint)
	}
	if _, err := sqs.NewFromConfig(cfg).CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String("awsx-per-service")}); err != nil {
		t.Fatalf("CreateQueue through AWS_ENDPOINT_URL_SQS: %v", err)
	}
	if n := len(rec.matching(func(r request) bool { return r.action == "AmazonSQS.CreateQueue" })); n != 1 {
		t.Errorf("kumo saw %d CreateQueue calls, want 1", n)
	}
	if n := len(rec.matching(func(r request) bool { return r.action == "AssumeRole" })); n != 0 {
		t.Errorf("saw %d AssumeRole calls without %s, want 0", n, awsx.EnvRoleARN)
	}
}

func TestLoadRejectsBadSessionName(t *testing.T) {
	isolateAWSEnv(t)
	t.Setenv(awsx.EnvRoleARN, "arn:aws:iam::000000000000:role/x")
	if _, err := awsx.Load(context.Background(), "bad service name"); err == nil {
		t.Fatal("Load accepted a service name STS would reject as a session name")
	}
}

func TestS3Options(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		want bool
	}{
		{"aws", nil, false},
		{"globalEndpoint", map[string]string{"AWS_ENDPOINT_URL": "http://127.0.0.1:4566"}, true},
		{"s3Endpoint", map[string]string{"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:4566"}, true},
		{"otherServiceEndpoint", map[string]string{"AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:4566"}, false},
		{"ignored", map[string]string{"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:4566", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			isolateAWSEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cfg, err := awsx.Load(context.Background(), "reaper")
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			var o s3.Options
			awsx.S3Options(cfg)(&o)
			if o.UsePathStyle != tc.want {
				t.Errorf("UsePathStyle = %v, want %v", o.UsePathStyle, tc.want)
			}
			if o.DisableLogOutputChecksumValidationSkipped != tc.want {
				t.Errorf("checksum-skipped warnings off = %v, want %v (off only for emulators)", o.DisableLogOutputChecksumValidationSkipped, tc.want)
			}
		})
	}
	t.Run("forEndpoint", func(t *testing.T) {
		var o s3.Options
		awsx.S3Options(awsx.ForEndpoint("http://127.0.0.1:4566"))(&o)
		if !o.UsePathStyle {
			t.Error("UsePathStyle = false for a BaseEndpoint config, want true")
		}
	})
}
