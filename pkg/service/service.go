// Package service is the wiring every Sortie stage shares: base configuration from the
// environment, dependencies built once in main, and the Main entry point.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/opsload"
	"github.com/sortie-fleet/sortie/pkg/telemetry"
)

// DefaultHTTPAddr is where a service serves /healthz, /readyz and /metrics when
// SORTIE_HTTP_ADDR is unset.
const DefaultHTTPAddr = ":8080"

// Base is the configuration every stage reads.
type Base struct {
	// Prefix names the stack's topics, queues and bucket (SORTIE_PREFIX, default "sortie").
	Prefix string
	// OpsConfig is where the ops-owned YAML is read (SORTIE_CONFIG): a file path,
	// s3://bucket/key or ssm:/parameter/name; empty means the embedded default that
	// `sortie dev` runs with.
	OpsConfig string
	// ConfigReload is how often the ops config is read again (SORTIE_CONFIG_RELOAD);
	// 0: only on SIGHUP. A new config is put in force only when it is valid.
	ConfigReload time.Duration
	// HTTPAddr is where /healthz, /readyz and /metrics are served (SORTIE_HTTP_ADDR,
	// default ":8080"); empty: not served.
	HTTPAddr string
	// LocalMode says the stack runs on the local cloud (SORTIE_LOCAL_MODE=1): the
	// sortie:ssh-endpoint tag is honoured (see pkg/sshaddr). Never on by default.
	LocalMode bool

	envErr error // a variable BaseFromEnv could not parse; Validate reports it
}

// BaseFromEnv reads SORTIE_PREFIX, SORTIE_CONFIG, SORTIE_CONFIG_RELOAD, SORTIE_HTTP_ADDR
// and SORTIE_LOCAL_MODE. Validate reports a value it could not parse.
func BaseFromEnv() Base {
	b := Base{
		Prefix:    Getenv("SORTIE_PREFIX", "sortie"),
		OpsConfig: os.Getenv("SORTIE_CONFIG"),
		HTTPAddr:  DefaultHTTPAddr,
		LocalMode: os.Getenv("SORTIE_LOCAL_MODE") == "1",
	}
	if v, ok := os.LookupEnv("SORTIE_HTTP_ADDR"); ok {
		b.HTTPAddr = v
	}
	b.ConfigReload, b.envErr = DurationEnv("SORTIE_CONFIG_RELOAD", 0)
	return b
}

// Validate reports every problem with the base configuration. It checks that a file
// SORTIE_CONFIG names exists; S3 and SSM locations are read at start-up.
func (b Base) Validate() error {
	var errs []error
	if b.envErr != nil {
		errs = append(errs, b.envErr)
	}
	if err := b.Topology().Validate(); err != nil {
		errs = append(errs, fmt.Errorf("SORTIE_PREFIX: %w", err))
	}
	if b.OpsConfig != "" {
		loc, err := opsload.ParseLocation(b.OpsConfig)
		if err == nil && loc.IsFile() {
			_, err = os.Stat(loc.Path)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("SORTIE_CONFIG: %w", err))
		}
	}
	if b.ConfigReload < 0 {
		errs = append(errs, fmt.Errorf("SORTIE_CONFIG_RELOAD %s: want >= 0 (0: only on SIGHUP)", b.ConfigReload))
	}
	if b.HTTPAddr != "" {
		if _, port, err := net.SplitHostPort(b.HTTPAddr); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("SORTIE_HTTP_ADDR %q: want host:port or :port (empty: off)", b.HTTPAddr))
		}
	}
	return errors.Join(errs...)
}

// base lets Serve reach the Base every stage's Config embeds.
func (b Base) base() Base { return b }

// Topology is the stack's resource naming.
func (b Base) Topology() bus.Topology { return bus.Topology{Prefix: b.Prefix} }

// LoadOps reads the ops configuration the base names once (a file, S3 or SSM; awsCfg is
// used for the last two) and refuses one whose recipes may fetch from the stack's
// secrets bucket.
func (b Base) LoadOps(ctx context.Context, awsCfg aws.Config) (*opsconfig.Config, error) {
	if b.OpsConfig == "" {
		ops := opsconfig.Default()
		if err := b.checkOps(ops); err != nil {
			return nil, err
		}
		return ops, nil
	}
	l, err := b.opsLoader(awsCfg)
	if err != nil {
		return nil, err
	}
	return l.Load(ctx)
}

// checkOps is what the stack requires of an ops configuration beyond its own validity.
func (b Base) checkOps(ops *opsconfig.Config) error {
	if err := ops.CheckStack(b.Topology().SecretsBucketName()); err != nil {
		return fmt.Errorf("ops config: %w", err)
	}
	return nil
}

func (b Base) opsLoader(awsCfg aws.Config) (opsload.Loader, error) {
	loc, err := opsload.ParseLocation(b.OpsConfig)
	if err != nil {
		return opsload.Loader{}, fmt.Errorf("SORTIE_CONFIG: %w", err)
	}
	l := opsload.Loader{Location: loc, Check: b.checkOps}
	switch {
	case loc.Bucket != "":
		l.S3 = s3.NewFromConfig(awsCfg, awsx.S3Options(awsCfg))
	case loc.Parameter != "":
		l.SSM = ssm.NewFromConfig(awsCfg)
	}
	return l, nil
}

// Deps are what a stage's Run needs from outside: built once in main (or by `sortie dev`
// and tests), injected so nothing below main loads configuration itself.
type Deps struct {
	AWS aws.Config
	// Ops is the ops configuration; handlers read Ops.Current() once per message, so a
	// reload takes effect without a restart. A *opsconfig.Config is a fixed one.
	Ops       opsconfig.Source
	Publisher *bus.Publisher
	Logger    *slog.Logger
	Now       func() time.Time
	// Telemetry receives the service's metrics and readiness; nil in tests that do not
	// look (its methods do nothing on nil).
	Telemetry *telemetry.Telemetry
	// Ledger is the job ledger; nil means the stack's table through AWS (LedgerFor).
	Ledger *ledger.Ledger
}

// LedgerFor returns the ledger the stage claims its transitions in: Deps.Ledger, else the
// table of the stack b names, through d.AWS.
func (d Deps) LedgerFor(b Base) *ledger.Ledger {
	if d.Ledger != nil {
		return d.Ledger
	}
	return ledger.ForStack(d.AWS, b.Topology())
}

// Bus completes a stage's router configuration: with telemetry, the router reports to it
// and waits for missing queues (reporting them as not ready) instead of failing.
func (d Deps) Bus(c bus.Config) bus.Config {
	if d.Telemetry != nil {
		c.Observer = d.Telemetry
		c.AwaitQueues = true
	}
	return c
}

// NewDeps builds the dependencies of a stage from an aws.Config and its base
// configuration: the ops config (read now, and kept current by the returned reloader,
// nil for the embedded default) and a publisher. tel may be nil.
func NewDeps(ctx context.Context, awsCfg aws.Config, base Base, logger *slog.Logger, tel *telemetry.Telemetry) (Deps, *opsload.Reloader, error) {
	var (
		ops    opsconfig.Source
		reload *opsload.Reloader
	)
	if base.OpsConfig == "" {
		def, err := base.LoadOps(ctx, awsCfg)
		if err != nil {
			return Deps{}, nil, err
		}
		ops = def
	} else {
		l, err := base.opsLoader(awsCfg)
		if err != nil {
			return Deps{}, nil, err
		}
		reload = &opsload.Reloader{Loader: l, Interval: base.ConfigReload, Logger: logger,
			Observe: func(r opsload.Result, at time.Time) {
				tel.ConfigReloaded(string(r))
				if r == opsload.Applied {
					tel.ConfigApplied(at)
				}
			}}
		if ops, err = reload.Prime(ctx); err != nil {
			return Deps{}, nil, fmt.Errorf("loading ops config: %w", err)
		}
	}
	if reload == nil {
		tel.ConfigApplied(time.Now())
	}
	tel.ConfigLoaded(nil)
	pub, err := bus.NewPublisher(bus.PublisherConfig{Topology: base.Topology(), AWS: awsCfg, Logger: logger})
	if err != nil {
		return Deps{}, nil, fmt.Errorf("creating publisher: %w", err)
	}
	return Deps{AWS: awsCfg, Ops: ops, Publisher: pub, Logger: logger, Now: time.Now, Telemetry: tel}, reload, nil
}

// WithDefaults fills the zero fields a test may leave out.
func (d Deps) WithDefaults() Deps {
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return d
}

// Getenv returns the variable's value, or def when it is unset or empty.
func Getenv(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// DurationEnv parses a duration variable, def when unset.
func DurationEnv(key string, def time.Duration) (time.Duration, error) {
	v := os.Getenv(key)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return d, nil
}

// Main is the whole main() of a stage's binary (or, run with the single argument
// "healthcheck", its health probe: see Healthcheck): JSON logs, SIGTERM handling, the AWS
// config from the default chain (AssumeRole when SORTIE_ROLE_ARN is set), then run.
// It exits non-zero with the error when run fails.
func Main(name string, run func(ctx context.Context, awsCfg aws.Config, logger *slog.Logger) error) {
	if len(os.Args) == 2 && os.Args[1] == HealthcheckArg {
		os.Exit(runHealthcheck())
	}
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("service", name)
	slog.SetDefault(logger)
	ctx, stop := bus.SignalContext(context.Background())
	defer stop()
	awsCfg, err := awsx.Load(ctx, name)
	if err == nil {
		err = run(ctx, awsCfg, logger)
	}
	if err != nil {
		logger.Error("exiting", "error", err.Error())
		stop()
		os.Exit(1)
	}
}

// Config is what Serve needs of a stage's configuration: the embedded Base.
type Config interface{ base() Base }

// Serve is the whole main() of a stage's binary: Main, then the stage's configuration from
// the environment (every problem reported at once), its health and metrics endpoints, its
// dependencies (the ops config reloaded on SIGHUP and every SORTIE_CONFIG_RELOAD), and run.
// On SIGTERM the service is not ready any more while it drains.
//
//	func main() { service.Serve("planner", planner.ConfigFromEnv, planner.Run) }
func Serve[C Config](name string, fromEnv func() (C, error), run func(context.Context, C, Deps) error) {
	Main(name, func(ctx context.Context, awsCfg aws.Config, logger *slog.Logger) error {
		cfg, err := fromEnv()
		if err != nil {
			return err
		}
		return Run(ctx, name, cfg.base(), awsCfg, logger, func(ctx context.Context, deps Deps) error {
			return run(ctx, cfg, deps)
		})
	})
}

// Run runs one stage as Serve does once its configuration is read: the health and
// metrics endpoint on base.HTTPAddr, the ops config from base.OpsConfig (reloaded on
// SIGHUP and every base.ConfigReload), a publisher, then run until it returns. When ctx
// is cancelled the service is not ready any more; the endpoint stays up until run has
// drained and returned.
func Run(ctx context.Context, name string, base Base, awsCfg aws.Config, logger *slog.Logger, run func(context.Context, Deps) error) (err error) {
	tel := telemetry.New(name)
	if base.HTTPAddr != "" {
		srv, err := telemetry.Listen(tel, base.HTTPAddr, logger)
		if err != nil {
			return err
		}
		logger.Info("serving health and metrics", "addr", srv.Addr(),
			"healthz", srv.URL()+"/healthz", "readyz", srv.URL()+"/readyz", "metrics", srv.URL()+"/metrics")
		defer func() { err = errors.Join(err, srv.Close()) }()
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	deps, reload, err := NewDeps(ctx, awsCfg, base, logger, tel)
	if err != nil {
		return err
	}
	defer deps.Publisher.Close()

	bg, stopBG := context.WithCancel(ctx)
	defer stopBG()
	if reload != nil {
		reload.Signals = hup
		go reload.Run(bg)
	} else {
		go func() {
			for {
				select {
				case <-bg.Done():
					return
				case <-hup:
					logger.Info("SIGHUP: the embedded ops config has nothing to reload (set SORTIE_CONFIG)")
				}
			}
		}()
	}
	go func() {
		<-bg.Done()
		tel.Drain()
		if ctx.Err() != nil {
			logger.Info("draining: not ready any more")
		}
	}()
	return run(ctx, deps)
}

// Rejecter answers the jobs the stage rejects (see bus.Config.OnDeadLetter) with their
// terminal event, through the stage's publisher and ledger.
func (d Deps) Rejecter(b Base, stage string) ledger.Rejecter {
	return ledger.Rejecter{Ledger: d.LedgerFor(b), Publisher: d.Publisher, Service: stage, Logger: d.Logger}
}
