package monitor

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/sortie-fleet/sortie/pkg/metrics"
	"github.com/sortie-fleet/sortie/pkg/service"
)

// Defaults of the configuration.
const (
	DefaultInterval   = 30 * time.Second
	DefaultGrace      = 60 * time.Second
	DefaultLease      = 10 * time.Minute
	DefaultMaxMisses  = 5
	DefaultSSHTimeout = 15 * time.Second
	DefaultParallel   = 16
	DefaultPollWait   = 20 * time.Second
)

// Config is the monitor's configuration.
type Config struct {
	service.Base
	// SSHKey is where the private key that logs in to instances is: a file path or
	// s3://bucket/key (SORTIE_SSH_KEY, required).
	SSHKey string
	// Interval is the time between two checks of a fleet (SORTIE_MONITOR_INTERVAL).
	// Timers are delayed SQS messages, so it is rounded up to whole seconds.
	Interval time.Duration
	// Grace is how long past its deadline a job may run before it is timed out
	// (SORTIE_MONITOR_GRACE).
	Grace time.Duration
	// Lease is how far ahead each check pushes the instances' sortie:lease-expires tag
	// (SORTIE_LEASE).
	Lease time.Duration
	// MaxMisses is how many checks in a row an instance may be unreachable over SSH
	// before the job fails (SORTIE_MONITOR_MAX_MISSES).
	MaxMisses int
	// SSHTimeout bounds one instance's check: connecting and running the status and tail
	// commands (SORTIE_MONITOR_SSH_TIMEOUT).
	SSHTimeout time.Duration
	// Parallel is how many instances are checked at once (SORTIE_MONITOR_PARALLEL).
	Parallel int
	// MetricsFlush is the CloudWatch batcher's flush interval (SORTIE_METRICS_FLUSH).
	MetricsFlush time.Duration
	// Settle is how long the monitor waits, once every workload has ended, for the last
	// TaskReported to arrive and be flushed before it reads the task totals
	// (SORTIE_MONITOR_SETTLE, default twice MetricsFlush).
	Settle time.Duration
	// PollWait is the SQS long poll of the monitor's queues (SORTIE_POLL_WAIT, 1-20 s).
	// Emulators (kumo) do not end a long poll when a delayed message (a timer) becomes
	// visible, so keep it short there: a timer can arrive up to PollWait late.
	PollWait time.Duration
}

// ConfigFromEnv reads the configuration from SORTIE_* variables and validates it.
func ConfigFromEnv() (Config, error) {
	cfg := Config{Base: service.BaseFromEnv(), SSHKey: os.Getenv("SORTIE_SSH_KEY")}
	var errs []error
	duration := func(key string, def time.Duration) time.Duration {
		d, err := service.DurationEnv(key, def)
		if err != nil {
			errs = append(errs, err)
		}
		return d
	}
	integer := func(key string, def int) int {
		v := os.Getenv(key)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not an integer", key, v))
		}
		return n
	}
	cfg.Interval = duration("SORTIE_MONITOR_INTERVAL", DefaultInterval)
	cfg.Grace = duration("SORTIE_MONITOR_GRACE", DefaultGrace)
	cfg.Lease = duration("SORTIE_LEASE", DefaultLease)
	cfg.MaxMisses = integer("SORTIE_MONITOR_MAX_MISSES", DefaultMaxMisses)
	cfg.SSHTimeout = duration("SORTIE_MONITOR_SSH_TIMEOUT", DefaultSSHTimeout)
	cfg.Parallel = integer("SORTIE_MONITOR_PARALLEL", DefaultParallel)
	cfg.MetricsFlush = duration("SORTIE_METRICS_FLUSH", metrics.DefaultFlushInterval)
	cfg.Settle = duration("SORTIE_MONITOR_SETTLE", 2*cfg.MetricsFlush)
	cfg.PollWait = duration("SORTIE_POLL_WAIT", DefaultPollWait)
	if err := errors.Join(errs...); err != nil {
		return Config{}, fmt.Errorf("monitor config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// WithDefaults fills the zero fields (for callers that build a Config in code).
func (c Config) WithDefaults() Config {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Grace == 0 {
		c.Grace = DefaultGrace
	}
	if c.Lease == 0 {
		c.Lease = DefaultLease
	}
	if c.MaxMisses == 0 {
		c.MaxMisses = DefaultMaxMisses
	}
	if c.SSHTimeout == 0 {
		c.SSHTimeout = DefaultSSHTimeout
	}
	if c.Parallel == 0 {
		c.Parallel = DefaultParallel
	}
	if c.MetricsFlush == 0 {
		c.MetricsFlush = metrics.DefaultFlushInterval
	}
	if c.Settle == 0 {
		c.Settle = 2 * c.MetricsFlush
	}
	if c.PollWait == 0 {
		c.PollWait = DefaultPollWait
	}
	return c
}

// Validate reports every problem with the configuration at once. Zero fields that have
// defaults are valid.
func (c Config) Validate() error {
	c = c.WithDefaults()
	errs := []error{c.Base.Validate()}
	if c.SSHKey == "" {
		errs = append(errs, errors.New("SORTIE_SSH_KEY is required: a private key file or s3://bucket/key"))
	}
	positive := func(name string, d time.Duration) {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s %s: want > 0", name, d))
		}
	}
	positive("SORTIE_MONITOR_INTERVAL", c.Interval)
	positive("SORTIE_MONITOR_GRACE", c.Grace)
	positive("SORTIE_MONITOR_SSH_TIMEOUT", c.SSHTimeout)
	positive("SORTIE_METRICS_FLUSH", c.MetricsFlush)
	positive("SORTIE_MONITOR_SETTLE", c.Settle)
	if c.Lease < time.Minute {
		errs = append(errs, fmt.Errorf("SORTIE_LEASE %s: want at least 1m", c.Lease))
	}
	if c.Lease <= c.Interval {
		errs = append(errs, fmt.Errorf("SORTIE_LEASE %s: want longer than SORTIE_MONITOR_INTERVAL %s, or leases lapse between checks", c.Lease, c.Interval))
	}
	if c.MaxMisses < 1 {
		errs = append(errs, fmt.Errorf("SORTIE_MONITOR_MAX_MISSES %d: want >= 1", c.MaxMisses))
	}
	if c.Parallel < 1 || c.Parallel > 256 {
		errs = append(errs, fmt.Errorf("SORTIE_MONITOR_PARALLEL %d: want 1-256", c.Parallel))
	}
	if c.PollWait < time.Second || c.PollWait > 20*time.Second || c.PollWait%time.Second != 0 {
		errs = append(errs, fmt.Errorf("SORTIE_POLL_WAIT %s: want whole seconds, 1s-20s", c.PollWait))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("monitor config: %w", err)
	}
	return nil
}
