// Package localcloud is a one-endpoint AWS for laptops and CI: EC2 instances that are real SSH hosts, every other service proxied to an in-process kumo.
package localcloud

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/sivchari/kumo"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/localcloud/sqsquery"
	"github.com/sortie-fleet/sortie/pkg/opensshd"
)

// DefaultAddr is where the local cloud listens when Options.Addr is empty: the port AWS
// emulators conventionally use.
const DefaultAddr = "127.0.0.1:4566"

// Defaults for Options.
const (
	DefaultBootDelay     = 200 * time.Millisecond
	DefaultShutdownDelay = 100 * time.Millisecond
	DefaultMaxInstances  = 1000
)

// Options configures a Cloud. The zero value is usable (it listens on DefaultAddr).
type Options struct {
	// Addr is the listen address; "" means DefaultAddr, "127.0.0.1:0" picks a free port.
	Addr string
	// BootDelay is how long an instance stays pending; 0 means DefaultBootDelay, a negative
	// value means no delay.
	BootDelay time.Duration
	// ShutdownDelay is how long an instance stays shutting-down; 0 means
	// DefaultShutdownDelay, a negative value means no delay.
	ShutdownDelay time.Duration
	// DataDir holds one working directory per instance; "" means a temporary directory that
	// Close removes.
	DataDir string
	// Logger receives the cloud's and the SSH hosts' logs; nil discards them.
	Logger *slog.Logger
	// MaxInstances caps the instances that are not terminated (InstanceLimitExceeded past
	// it); 0 means DefaultMaxInstances.
	MaxInstances int
	// Capacity caps the instances of a type that are not terminated; a launch that cannot
	// get MinCount of them fails with InsufficientInstanceCapacity. Types not listed are
	// unlimited. Change it at run time with SetCapacity and SetCapacityFault.
	Capacity map[string]int
	// ThrottleEvery makes every Nth EC2 request fail with RequestLimitExceeded; 0 disables
	// it. Change it at run time with SetThrottle.
	ThrottleEvery int
	// InstanceEnv is extra environment ("K=V") for every command run on an instance, such
	// as a PATH holding the tools an AMI would ship. The cloud's own variables
	// (AWS_ENDPOINT_URL, credentials, SORTIE_INSTANCE_ID) come after and win.
	InstanceEnv []string
	// OnExec, when set, is called with every command an SSH client runs on an instance,
	// exactly as sent (an audit hook; tests assert on it). The embedded server only.
	OnExec func(instanceID, command string)
	// SSH is the instances' SSH server: SSHEmbedded ("" too, pkg/sshhost) or SSHOpenSSH
	// (Debian's sshd, pkg/opensshd: it logs in only the user the cloud runs as).
	SSH string
}

// SSH servers an instance can run.
const (
	SSHEmbedded = "embedded"
	SSHOpenSSH  = "openssh"
)

// roleAssumer is the STS call that gives instances their credentials.
type roleAssumer interface {
	AssumeRole(ctx context.Context, in *sts.AssumeRoleInput, optFns ...func(*sts.Options)) (*sts.AssumeRoleOutput, error)
}

// Cloud is a running local cloud: an HTTP endpoint, an in-process kumo behind it and the
// EC2 instances it launched.
type Cloud struct {
	opts    Options
	log     *slog.Logger
	dataDir string
	tempDir bool // dataDir was created by New and is removed by Close

	kumo      *kumo.Server
	proxy     *httputil.ReverseProxy
	sqsQuery  *sqsquery.Handler // SQS's Query protocol, translated to kumo's JSON
	transport *http.Transport   // the proxy's, to kumo
	sts       roleAssumer
	rules     ruleReader  // kumo's EventBridge, for EC2's notices
	queues    queueSender // kumo's SQS, for EC2's notices
	ln        net.Listener
	server    *http.Server
	url       string

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // instance boot and shutdown goroutines, notice deliveries, interruptions

	mu           sync.Mutex
	closed       bool
	instances    map[string]*instance
	order        []*instance // launch order, for stable pagination
	reservations map[string][]*instance
	tokens       map[string]clientTokenRecord
	keyPairs     map[string]*keyPair // by name
	network      *network
	capacity     map[string]int
	spotFaults   map[string]string  // instance type → the error code its spot launches fail with
	spotPrices   map[string]float64 // instance type → its spot price, checked against MaxPrice
	throttle     throttleState
}

var _ http.Handler = (*Cloud)(nil)

// New starts the local cloud's listener and, unless another Cloud of this process already
// runs one, an in-process kumo (see sharedKumo).
func New(opts Options) (*Cloud, error) {
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.BootDelay == 0 {
		opts.BootDelay = DefaultBootDelay
	}
	if opts.ShutdownDelay == 0 {
		opts.ShutdownDelay = DefaultShutdownDelay
	}
	if opts.MaxInstances <= 0 {
		opts.MaxInstances = DefaultMaxInstances
	}
	switch opts.SSH {
	case "", SSHEmbedded:
	case SSHOpenSSH:
		if err := opensshd.Available(""); err != nil {
			return nil, fmt.Errorf("ssh server %s: %w", opts.SSH, err)
		}
	default:
		return nil, fmt.Errorf("ssh server %q: want %s or %s", opts.SSH, SSHEmbedded, SSHOpenSSH)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	c := &Cloud{
		opts:         opts,
		log:          logger,
		instances:    map[string]*instance{},
		reservations: map[string][]*instance{},
		tokens:       map[string]clientTokenRecord{},
		keyPairs:     map[string]*keyPair{},
		network:      newNetwork(),
		capacity:     map[string]int{},
		spotFaults:   map[string]string{},
		spotPrices:   map[string]float64{},
		throttle:     throttleState{every: opts.ThrottleEvery},
	}
	for t, n := range opts.Capacity {
		c.capacity[t] = n
	}

	c.dataDir = opts.DataDir
	if c.dataDir == "" {
		dir, err := os.MkdirTemp("", "sortie-localcloud-")
		if err != nil {
			return nil, fmt.Errorf("creating data dir: %w", err)
		}
		c.dataDir, c.tempDir = dir, true
	} else if err := os.MkdirAll(c.dataDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating data dir: %w", err)
	}

	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		c.removeTempDir()
		return nil, fmt.Errorf("listening on %s: %w", opts.Addr, err)
	}
	c.ln = ln
	c.url = "http://" + ln.Addr().String()

	c.kumo = acquireKumo()
	target, err := url.Parse(c.kumo.URL)
	if err != nil {
		releaseKumo()
		_ = ln.Close()
		c.removeTempDir()
		return nil, fmt.Errorf("parsing kumo url %q: %w", c.kumo.URL, err)
	}
	c.transport = http.DefaultTransport.(*http.Transport).Clone()
	c.transport.MaxIdleConnsPerHost = 64
	c.proxy = newProxy(target, c.transport, logger)
	c.sqsQuery = sqsquery.New(c.kumo.URL, &http.Client{Transport: c.transport}, logger)
	c.sts = sts.NewFromConfig(awsx.ForEndpoint(c.kumo.URL))
	c.rules = eventbridge.NewFromConfig(awsx.ForEndpoint(c.kumo.URL))
	c.queues = sqs.NewFromConfig(awsx.ForEndpoint(c.kumo.URL))
	c.ctx, c.cancel = context.WithCancel(context.Background())

	c.server = &http.Server{Handler: c, ReadHeaderTimeout: 30 * time.Second}
	go func() {
		if err := c.server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.log.Error("local cloud server stopped", "err", err)
		}
	}()
	c.log.Info("local cloud listening", "url", c.url, "data_dir", c.dataDir)
	return c, nil
}

// sharedKumo is the process's one kumo server. kumo keeps every service's state in
// process-global variables, and kumo.NewServer rewires them (SNS→SQS, S3→SQS/Lambda
// publishers) without locking while other servers may be serving: a second server would
// share the first one's state anyway, and creating it races. So every Cloud of a process
// shares one server, closed when the last Cloud closes.
var sharedKumo struct {
	sync.Mutex
	srv  *kumo.Server
	refs int
}

func acquireKumo() *kumo.Server {
	sharedKumo.Lock()
	defer sharedKumo.Unlock()
	if sharedKumo.srv == nil {
		sharedKumo.srv = kumo.NewServer()
	}
	sharedKumo.refs++
	return sharedKumo.srv
}

func releaseKumo() {
	sharedKumo.Lock()
	defer sharedKumo.Unlock()
	sharedKumo.refs--
	if sharedKumo.refs == 0 {
		sharedKumo.srv.Close()
		sharedKumo.srv = nil
	}
}

// newProxy forwards to kumo, keeping the client's Host header: kumo reads S3
// virtual-hosted bucket names from it.
func newProxy(target *url.URL, transport http.RoundTripper, logger *slog.Logger) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host
		},
		Transport: transport,
		ErrorLog:  slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

// URL is the endpoint to give AWS SDKs and CLIs (AWS_ENDPOINT_URL).
func (c *Cloud) URL() string { return c.url }

// KumoURL is the in-process kumo's own endpoint (for diagnostics; clients should use URL).
func (c *Cloud) KumoURL() string { return c.kumo.URL }

// Handler returns the handler that serves the local cloud's endpoint.
func (c *Cloud) Handler() http.Handler { return c }

// DataDir is the directory holding every instance's working directory.
func (c *Cloud) DataDir() string { return c.dataDir }

// Close terminates every instance (closing its SSH host and killing its processes), stops
// the listener and kumo, and removes the data directory if New created it.
func (c *Cloud) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.cancel()
	for _, inst := range c.order {
		c.terminateLocked(inst, userShutdown())
	}
	c.mu.Unlock()

	c.wg.Wait()

	// Long polls (SQS ReceiveMessage) may hold connections for 20 s: give in-flight
	// requests a moment, then cut them.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var err error
	if c.server.Shutdown(ctx) != nil {
		c.log.Info("closing connections still in flight")
		if cerr := c.server.Close(); cerr != nil {
			err = fmt.Errorf("closing server: %w", cerr)
		}
	}
	c.transport.CloseIdleConnections()
	releaseKumo()
	c.removeTempDir()
	return err
}

func (c *Cloud) removeTempDir() {
	if c.tempDir {
		if err := os.RemoveAll(c.dataDir); err != nil {
			c.log.Warn("removing data dir", "dir", c.dataDir, "err", err)
		}
	}
}

// Limits on what a client may send, as AWS has them: a form-encoded (Query protocol)
// request body, and an instance's user data (16 KB, before base64).
const (
	MaxFormBytes     = 10 << 20
	MaxUserDataBytes = 16 << 10
)

// ServeHTTP answers EC2 itself (an action it does not implement gets EC2's InvalidAction),
// translates SQS Query requests to kumo's SQS JSON protocol, serves the admin endpoint
// (AdminPath) and proxies every other request to kumo.
func (c *Cloud) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, AdminPath) {
		c.serveAdmin(w, r)
		return
	}
	service := signingName(r)
	if service != "" && service != "ec2" && service != "sqs" {
		c.proxy.ServeHTTP(w, r)
		return
	}
	if !isForm(r) { // SQS's JSON protocol among others
		c.proxy.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxFormBytes))
	if err != nil {
		status := http.StatusBadRequest
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			status = http.StatusRequestEntityTooLarge
		}
		http.Error(w, "reading request body: "+err.Error(), status)
		return
	}
	_ = r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(body))

	form, err := url.ParseQuery(string(body))
	if err != nil {
		form = url.Values{}
	}
	for k, v := range r.URL.Query() {
		if _, ok := form[k]; !ok {
			form[k] = v
		}
	}
	if service == "sqs" || (service == "" && form.Get("Version") == sqsquery.Version) {
		c.sqsQuery.Serve(w, r, form)
		return
	}
	if service == "" && form.Get("Version") != ec2Version {
		c.proxy.ServeHTTP(w, r)
		return
	}
	action := form.Get("Action")
	handler, ok := handlers[action]
	if !ok {
		handler = unknownAction
	}
	c.serveEC2(w, action, form, handler)
}

// isForm reports whether r can carry a Query API call.
func isForm(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet:
		return r.URL.Query().Get("Action") != ""
	case http.MethodPost:
		return strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded")
	}
	return false
}

// signingName returns the service of the request's SigV4 credential scope
// (Credential=AKID/date/region/service/aws4_request), or "" for an unsigned request.
func signingName(r *http.Request) string {
	cred := r.URL.Query().Get("X-Amz-Credential")
	if auth := r.Header.Get("Authorization"); auth != "" {
		_, after, ok := strings.Cut(auth, "Credential=")
		if !ok {
			return ""
		}
		cred, _, _ = strings.Cut(after, ",")
		cred = strings.TrimSpace(cred)
	}
	parts := strings.Split(cred, "/")
	if len(parts) != 5 || parts[4] != "aws4_request" {
		return ""
	}
	return parts[3]
}
