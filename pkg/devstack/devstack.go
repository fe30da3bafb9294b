// Package devstack runs the whole of Sortie in one process on the local cloud: the local
// cloud, `infra up`, the five services, and the demo job. `sortie dev` and the end-to-end
// tests start it.
package devstack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"sync"
	"time"

	"al.essio.dev/pkg/shellescape"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/infra"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/telemetry"
	"github.com/sortie-fleet/sortie/pkg/watch"
	"github.com/sortie-fleet/sortie/services/bootstrapper"
	"github.com/sortie-fleet/sortie/services/monitor"
	"github.com/sortie-fleet/sortie/services/planner"
	"github.com/sortie-fleet/sortie/services/provisioner"
	"github.com/sortie-fleet/sortie/services/reaper"
)

// Options configure a Stack. Zero values suit `sortie dev`.
type Options struct {
	// Addr is the local cloud's listen address (default 127.0.0.1:0: a free port).
	Addr string
	// Prefix names the stack's resources (default "sortie").
	Prefix string
	// Ops is the ops configuration (default: the embedded one).
	Ops *opsconfig.Config
	// WorkerCommand is the argv that runs the demo worker (`sortie worker`); instances
	// get it on their PATH as `sortie-worker`. Required for the demo recipe.
	WorkerCommand []string
	// WorkerEnv is extra environment for everything running on the instances.
	WorkerEnv []string
	// Logger receives the services' JSON logs (default: discarded).
	Logger *slog.Logger
	// DataDir holds the instances' directories (default: a temporary directory).
	DataDir string
	// MonitorInterval is the time between two checks of a fleet (default 1 s).
	MonitorInterval time.Duration
	// OnExec sees every command run on an instance (the local cloud's audit hook; the
	// embedded SSH server only).
	OnExec func(instanceID, command string)
	// SSH is the instances' SSH server (localcloud.SSHEmbedded, the default, or
	// localcloud.SSHOpenSSH). With OpenSSH every template logs in as the user the stack runs
	// as: an sshd started by that user can authenticate no other. With Cloud set, say
	// which server that cloud runs.
	SSH string
	// HTTPAddr is where each service serves /healthz, /readyz and /metrics, each on a
	// listener of its own (default 127.0.0.1:0: a free port each); "-": not served.
	HTTPAddr string
	// Recorder, when set, records every AWS call each service makes (each service gets its
	// own wrapped config, as it would its own task role); the least-privilege test checks
	// the calls against the Terraform's policies.
	Recorder *awsx.Recorder
	// Cloud, if set, is a local cloud the stack shares with others (tests of several stacks
	// in one account): the stack uses it and leaves it running on Close; Addr, DataDir,
	// WorkerCommand, WorkerEnv and OnExec are then the cloud's business.
	Cloud *localcloud.Cloud
	// Replicas is the number of instances of every service (default 1), each with its own
	// publisher and ledger client, competing for the same queues as separate processes do.
	Replicas int
	// VisibilityTimeout is the queues' visibility timeout (default: infra's, 60 s). A
	// message whose handler died comes back after it.
	VisibilityTimeout time.Duration
	// Lease is the ledger's claim lease (default ledger.DefaultLease); keep it below two
	// thirds of the visibility timeout.
	Lease time.Duration
	// Fault is the ledger's fault hook (tests): true at a claim's checkpoint simulates the
	// crash of that replica's handler after its claim and before its publish.
	Fault func(jobID string, stage ledger.Stage) bool
}

// Stack is a running Sortie on the local cloud.
type Stack struct {
	Cloud     *localcloud.Cloud
	AWS       aws.Config
	Topology  bus.Topology
	Ops       *opsconfig.Config
	EC2       *ec2.Client
	S3        *s3.Client
	SQS       *sqs.Client
	SNS       *sns.Client
	CW        *cloudwatch.Client
	Publisher *bus.Publisher
	// Ledger is the stack's job ledger.
	Ledger *ledger.Ledger
	// SSHKey is where the services read the instances' login key: s3://<prefix>-secrets/keys/<name>.pem.
	SSHKey string
	// Endpoints is each service's health and metrics base URL (http://host:port), by
	// service, in the order the services start; empty when not served.
	Endpoints []Endpoint
	// Telemetry is each service's metrics and readiness, by service name.
	Telemetry map[string]*telemetry.Telemetry

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	errs    []error
	binDir  string
	closers []func() error
}

// Start brings the stack up: local cloud, infra, login key, the five services.
func Start(ctx context.Context, opts Options) (_ *Stack, err error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Prefix == "" {
		opts.Prefix = "sortie"
	}
	if opts.Ops == nil {
		opts.Ops = opsconfig.Default()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MonitorInterval == 0 {
		opts.MonitorInterval = time.Second
	}
	if opts.SSH == localcloud.SSHOpenSSH {
		u, err := user.Current()
		if err != nil {
			return nil, err
		}
		ops := *opts.Ops
		ops.Templates = maps.Clone(ops.Templates)
		for name, t := range ops.Templates {
			t.User = u.Username
			ops.Templates[name] = t
		}
		opts.Ops = &ops
	}
	if opts.HTTPAddr == "" {
		opts.HTTPAddr = "127.0.0.1:0"
	}
	s := &Stack{Topology: bus.Topology{Prefix: opts.Prefix}, Ops: opts.Ops}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	// The instances' PATH gets a directory holding sortie-worker, as an AMI would.
	if s.binDir, err = os.MkdirTemp("", "sortie-bin-"); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() error { return os.RemoveAll(s.binDir) })
	if len(opts.WorkerCommand) > 0 {
		script := "#!/bin/sh\nexec " + shellescape.QuoteCommand(opts.WorkerCommand) + " \"$@\"\n"
		if err := os.WriteFile(filepath.Join(s.binDir, "sortie-worker"), []byte(script), 0o755); err != nil {
			return nil, err
		}
	}
	env := append([]string{"PATH=" + s.binDir + ":/usr/local/bin:/usr/bin:/bin"}, opts.WorkerEnv...)

	if s.Cloud = opts.Cloud; s.Cloud == nil {
		s.Cloud, err = localcloud.New(localcloud.Options{
			Addr: opts.Addr, DataDir: opts.DataDir, Logger: opts.Logger.With("component", "localcloud"),
			BootDelay: 200 * time.Millisecond, InstanceEnv: env, OnExec: opts.OnExec, SSH: opts.SSH,
		})
		if err != nil {
			return nil, fmt.Errorf("starting local cloud: %w", err)
		}
		s.closers = append(s.closers, s.Cloud.Close)
	}
	s.AWS = awsx.ForEndpoint(s.Cloud.URL())
	s.EC2 = ec2.NewFromConfig(s.AWS)
	s.S3 = s3.NewFromConfig(s.AWS, awsx.S3Options(s.AWS))
	s.SQS = sqs.NewFromConfig(s.AWS)
	s.SNS = sns.NewFromConfig(s.AWS)
	s.CW = cloudwatch.NewFromConfig(s.AWS)
	s.Ledger = ledger.ForStack(s.AWS, s.Topology)

	if _, err := infra.Up(ctx, infra.NewClients(s.AWS), s.Topology, infra.UpOptions{VisibilityTimeout: opts.VisibilityTimeout}); err != nil {
		return nil, fmt.Errorf("infra up: %w", err)
	}
	if s.SSHKey, err = CreateLoginKeys(ctx, s.EC2, s.S3, s.Topology.Prefix, s.Ops); err != nil {
		return nil, fmt.Errorf("dev stack: %w", err)
	}
	if s.Publisher, err = bus.NewPublisher(bus.PublisherConfig{Topology: s.Topology, AWS: s.AWS, Logger: opts.Logger}); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.Publisher.Close)
	return s, s.startServices(opts)
}

// startServices runs the five services, each with its own publisher, as separate
// processes would.
func (s *Stack) startServices(opts Options) error {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	base := service.Base{Prefix: s.Topology.Prefix, LocalMode: true}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	fast := 100 * time.Millisecond

	type svc struct {
		name string
		run  func(ctx context.Context, deps service.Deps) error
	}
	services := []svc{
		{bus.Planner, func(ctx context.Context, d service.Deps) error {
			return planner.Run(ctx, planner.Config{Base: base}, d)
		}},
		{bus.Provisioner, func(ctx context.Context, d service.Deps) error {
			return provisioner.Run(ctx, provisioner.Config{Base: base, HostKeySecret: secret,
				WaiterMinDelay: fast, WaiterMaxDelay: time.Second, LaunchTimeout: time.Minute}, d)
		}},
		{bus.Bootstrapper, func(ctx context.Context, d service.Deps) error {
			return bootstrapper.Run(ctx, bootstrapper.Config{Base: base, SSHKey: s.SSHKey, DialTimeout: 30 * time.Second, PollWait: time.Second}, d)
		}},
		{bus.Monitor, func(ctx context.Context, d service.Deps) error {
			return monitor.Run(ctx, monitor.Config{Base: base, SSHKey: s.SSHKey, Interval: opts.MonitorInterval,
				PollWait: time.Second, MetricsFlush: 500 * time.Millisecond}, d)
		}},
		{bus.Reaper, func(ctx context.Context, d service.Deps) error {
			return reaper.Run(ctx, reaper.Config{Base: base, SSHKey: s.SSHKey, ArchiveTimeout: 30 * time.Second,
				WaiterMinDelay: fast, WaiterMaxDelay: time.Second, PollWait: time.Second, SweepInterval: 10 * time.Second}, d)
		}},
	}
	s.Telemetry = map[string]*telemetry.Telemetry{}
	replicas := max(opts.Replicas, 1)
	for _, sv := range services {
		for r := range replicas {
			name := sv.name
			if r > 0 {
				name = fmt.Sprintf("%s-%d", sv.name, r+1)
			}
			logger := opts.Logger.With("service", sv.name)
			if replicas > 1 {
				logger = logger.With("replica", r+1)
			}
			awsCfg := s.AWS
			if opts.Recorder != nil {
				awsCfg = opts.Recorder.Wrap(s.AWS, sv.name)
			}
			pub, err := bus.NewPublisher(bus.PublisherConfig{Topology: s.Topology, AWS: awsCfg, Logger: logger})
			if err != nil {
				return err
			}
			s.closers = append(s.closers, pub.Close)
			led, err := ledger.New(ledger.Config{
				API: dynamodb.NewFromConfig(awsCfg), Table: s.Topology.LedgerTableName(), Lease: opts.Lease, Fault: opts.Fault,
			})
			if err != nil {
				return err
			}
			tel := telemetry.New(sv.name)
			tel.ConfigLoaded(nil)
			s.Telemetry[name] = tel
			if opts.HTTPAddr != "-" {
				srv, err := telemetry.Listen(tel, opts.HTTPAddr, logger)
				if err != nil {
					return err
				}
				s.closers = append(s.closers, srv.Close)
				s.Endpoints = append(s.Endpoints, Endpoint{Service: name, URL: srv.URL()})
			}
			deps := service.Deps{AWS: awsCfg, Ops: s.Ops, Publisher: pub, Logger: logger, Now: time.Now, Telemetry: tel, Ledger: led}
			s.wg.Add(1)
			go func() {
				<-ctx.Done() // Close: not ready while draining
				tel.Drain()
			}()
			go func() {
				defer s.wg.Done()
				if err := sv.run(ctx, deps); err != nil && ctx.Err() == nil {
					s.mu.Lock()
					s.errs = append(s.errs, fmt.Errorf("%s: %w", name, err))
					s.mu.Unlock()
					logger.Error("service stopped", "error", err.Error())
				}
			}()
		}
	}
	return nil
}

// Endpoint is where one service serves /healthz, /readyz and /metrics.
type Endpoint struct {
	Service string
	URL     string // http://host:port
}

// Err reports services that stopped on their own (nil while all run).
func (s *Stack) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}

// Close stops the services (letting in-flight handlers finish), then the local cloud
// unless it was given (Options.Cloud), which terminates every instance still running.
func (s *Stack) Close() error {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	var errs []error
	for i := len(s.closers) - 1; i >= 0; i-- {
		if err := s.closers[i](); err != nil {
			errs = append(errs, err)
		}
	}
	s.closers = nil
	return errors.Join(errs...)
}

// Watch opens a watcher on every event of the stack.
func (s *Stack) Watch(ctx context.Context) (*watch.Watcher, error) {
	return watch.Open(ctx, s.SNS, s.SQS, s.Topology, "dev-"+randomHex(4))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
