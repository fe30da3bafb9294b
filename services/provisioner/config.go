package provisioner

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/sortie-fleet/sortie/pkg/hostkey"
	"github.com/sortie-fleet/sortie/pkg/service"
)

// Environment variables the provisioner reads besides service.Base's.
const (
	// EnvHostKeySecret is the secret fleet host keys are derived from: at least 32 random
	// bytes, hex or base64. Required. Every replica must have the same one.
	EnvHostKeySecret = "SORTIE_HOSTKEY_SECRET"
	// EnvWaiterMinDelay and EnvWaiterMaxDelay bound the delay between the running
	// waiter's DescribeInstances polls.
	EnvWaiterMinDelay = "SORTIE_WAITER_MIN_DELAY"
	EnvWaiterMaxDelay = "SORTIE_WAITER_MAX_DELAY"
	// EnvLaunchTimeout is how long a fleet may take to reach running before it is
	// terminated and the launch fails.
	EnvLaunchTimeout = "SORTIE_LAUNCH_TIMEOUT"
)

// Defaults of the durations.
const (
	DefaultWaiterMinDelay = 2 * time.Second
	DefaultWaiterMaxDelay = 15 * time.Second
	DefaultLaunchTimeout  = 3 * time.Minute
)

// Config is the provisioner's configuration.
type Config struct {
	service.Base
	// HostKeySecret derives every fleet's SSH host key (pkg/hostkey). Never logged.
	HostKeySecret []byte
	// WaiterMinDelay and WaiterMaxDelay bound the delay between polls for running.
	WaiterMinDelay time.Duration
	WaiterMaxDelay time.Duration
	// LaunchTimeout bounds the wait for a fleet to be running.
	LaunchTimeout time.Duration
}

// ConfigFromEnv reads the configuration from SORTIE_* variables and reports every problem
// at once.
func ConfigFromEnv() (Config, error) {
	cfg := Config{Base: service.BaseFromEnv()}
	var errs []error
	check := cfg // what Validate sees: fields that failed to parse are reported once, here
	if raw := os.Getenv(EnvHostKeySecret); raw != "" {
		secret, err := hostkey.ParseSecret(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", EnvHostKeySecret, err))
			secret = make([]byte, hostkey.MinSecretBytes)
		} else {
			cfg.HostKeySecret = secret
		}
		check.HostKeySecret = secret
	}
	for _, d := range []struct {
		env      string
		def      time.Duration
		cfg, chk *time.Duration
	}{
		{EnvWaiterMinDelay, DefaultWaiterMinDelay, &cfg.WaiterMinDelay, &check.WaiterMinDelay},
		{EnvWaiterMaxDelay, DefaultWaiterMaxDelay, &cfg.WaiterMaxDelay, &check.WaiterMaxDelay},
		{EnvLaunchTimeout, DefaultLaunchTimeout, &cfg.LaunchTimeout, &check.LaunchTimeout},
	} {
		v, err := service.DurationEnv(d.env, d.def)
		if err != nil {
			errs = append(errs, err)
			v = d.def
		}
		*d.cfg, *d.chk = v, v
	}
	if err := check.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, fmt.Errorf("provisioner config: %w", err)
	}
	return cfg, nil
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	errs := []error{c.Base.Validate()}
	if len(c.HostKeySecret) < hostkey.MinSecretBytes {
		errs = append(errs, fmt.Errorf("%s: required: at least %d random bytes, hex or base64 (e.g. `openssl rand -hex 32`), got %d bytes",
			EnvHostKeySecret, hostkey.MinSecretBytes, len(c.HostKeySecret)))
	}
	if c.WaiterMinDelay <= 0 {
		errs = append(errs, fmt.Errorf("%s: must be > 0, got %s", EnvWaiterMinDelay, c.WaiterMinDelay))
	}
	if c.WaiterMaxDelay < c.WaiterMinDelay {
		errs = append(errs, fmt.Errorf("%s: must be ≥ %s (%s), got %s", EnvWaiterMaxDelay, EnvWaiterMinDelay, c.WaiterMinDelay, c.WaiterMaxDelay))
	}
	if c.LaunchTimeout <= c.WaiterMinDelay {
		errs = append(errs, fmt.Errorf("%s: must be > %s (%s), got %s", EnvLaunchTimeout, EnvWaiterMinDelay, c.WaiterMinDelay, c.LaunchTimeout))
	}
	return errors.Join(errs...)
}

// LogValue keeps the host key secret out of logs.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("prefix", c.Prefix),
		slog.String("ops_config", c.OpsConfig),
		slog.String("hostkey_secret", "[redacted]"),
		slog.Duration("waiter_min_delay", c.WaiterMinDelay),
		slog.Duration("waiter_max_delay", c.WaiterMaxDelay),
		slog.Duration("launch_timeout", c.LaunchTimeout),
	)
}
