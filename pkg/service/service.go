// Package service is the wiring every Sortie stage shares: base configuration from the
// environment, dependencies built once in main, and the Main entry point.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
)

// Base is the configuration every stage reads.
type Base struct {
	// Prefix names the stack's topics, queues and bucket (SORTIE_PREFIX, default "sortie").
	Prefix string
	// OpsConfig is the path of the ops-owned YAML (SORTIE_CONFIG); empty means the
	// embedded default that `sortie dev` runs with.
	OpsConfig string
	// LocalMode says the stack runs on the local cloud (SORTIE_LOCAL_MODE=1): the
	// sortie:ssh-endpoint tag is honoured (see pkg/sshaddr). Never on by default.
	LocalMode bool
}

// BaseFromEnv reads SORTIE_PREFIX and SORTIE_CONFIG.
func BaseFromEnv() Base {
	return Base{
		Prefix:    Getenv("SORTIE_PREFIX", "sortie"),
		OpsConfig: os.Getenv("SORTIE_CONFIG"),
		LocalMode: os.Getenv("SORTIE_LOCAL_MODE") == "1",
	}
}

// Validate reports every problem with the base configuration.
func (b Base) Validate() error {
	var errs []error
	if err := b.Topology().Validate(); err != nil {
		errs = append(errs, fmt.Errorf("SORTIE_PREFIX: %w", err))
	}
	if b.OpsConfig != "" {
		if _, err := os.Stat(b.OpsConfig); err != nil {
			errs = append(errs, fmt.Errorf("SORTIE_CONFIG: %w", err))
		}
	}
	return errors.Join(errs...)
}

// base lets Serve reach the Base every stage's Config embeds.
func (b Base) base() Base { return b }

// Topology is the stack's resource naming.
func (b Base) Topology() bus.Topology { return bus.Topology{Prefix: b.Prefix} }

// LoadOps reads the ops configuration the base names and refuses one whose recipes may
// fetch from the stack's secrets bucket.
func (b Base) LoadOps() (*opsconfig.Config, error) {
	ops := opsconfig.Default()
	if b.OpsConfig != "" {
		var err error
		if ops, err = opsconfig.Load(b.OpsConfig); err != nil {
			return nil, err
		}
	}
	if err := ops.CheckStack(b.Topology().SecretsBucketName()); err != nil {
		return nil, fmt.Errorf("ops config: %w", err)
	}
	return ops, nil
}

// Deps are what a stage's Run needs from outside: built once in main (or by `sortie dev`
// and tests), injected so nothing below main loads configuration itself.
type Deps struct {
	AWS       aws.Config
	Ops       *opsconfig.Config
	Publisher *bus.Publisher
	Logger    *slog.Logger
	Now       func() time.Time
}

// NewDeps builds the dependencies of a stage from an aws.Config and its base configuration.
func NewDeps(awsCfg aws.Config, base Base, logger *slog.Logger) (Deps, error) {
	ops, err := base.LoadOps()
	if err != nil {
		return Deps{}, fmt.Errorf("loading ops config: %w", err)
	}
	pub, err := bus.NewPublisher(bus.PublisherConfig{Topology: base.Topology(), AWS: awsCfg, Logger: logger})
	if err != nil {
		return Deps{}, fmt.Errorf("creating publisher: %w", err)
	}
	return Deps{AWS: awsCfg, Ops: ops, Publisher: pub, Logger: logger, Now: time.Now}, nil
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

// Main is the whole main() of a stage's binary: JSON logs, SIGTERM handling, the AWS
// config from the default chain (AssumeRole when SORTIE_ROLE_ARN is set), then run.
// It exits non-zero with the error when run fails.
func Main(name string, run func(ctx context.Context, awsCfg aws.Config, logger *slog.Logger) error) {
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
// the environment (every problem reported at once), its dependencies, and run.
//
//	func main() { service.Serve("planner", planner.ConfigFromEnv, planner.Run) }
func Serve[C Config](name string, fromEnv func() (C, error), run func(context.Context, C, Deps) error) {
	Main(name, func(ctx context.Context, awsCfg aws.Config, logger *slog.Logger) error {
		cfg, err := fromEnv()
		if err != nil {
			return err
		}
		deps, err := NewDeps(awsCfg, cfg.base(), logger)
		if err != nil {
			return err
		}
		defer deps.Publisher.Close()
		return run(ctx, cfg, deps)
	})
}
