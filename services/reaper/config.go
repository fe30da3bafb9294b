package reaper

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/sshkey"
)

// Defaults of the reaper's settings.
const (
	DefaultConcurrency         = 16
	DefaultArchiveTimeout      = 2 * time.Minute
	DefaultArchiveMaxBytes     = 16 << 30
	DefaultSweepInterval       = 60 * time.Second
	DefaultSweepArchiveTimeout = 20 * time.Second
	DefaultSweepArchiveWindow  = 10 * time.Minute
	DefaultMetricsFlush        = time.Second
	DefaultWaiterMinDelay      = 2 * time.Second
	DefaultWaiterMaxDelay      = 30 * time.Second
	DefaultTerminateTimeout    = 5 * time.Minute
	DefaultPollWait            = 20 * time.Second
	MaxConcurrency             = 256
)

// Config is the reaper's configuration, read from the environment.
type Config struct {
	service.Base
	// SSHKey is where the instances' login key is read from once at start: a file path or
	// s3://bucket/key (SORTIE_SSH_KEY, required).
	SSHKey string
	// Concurrency bounds the instances archived at once (SORTIE_REAPER_CONCURRENCY, default 16).
	Concurrency int
	// ArchiveTimeout is how long the reaper keeps trying to archive an instance's logs
	// before it terminates the instance anyway (SORTIE_ARCHIVE_TIMEOUT, default 2m).
	ArchiveTimeout time.Duration
	// ArchiveMaxBytes caps one compressed archive (SORTIE_ARCHIVE_MAX_BYTES, default 16 GiB).
	// Archives are streamed to S3, never held in memory: the cap bounds storage and time.
	ArchiveMaxBytes int64
	// KMSKeyID is the KMS key the archives are encrypted with (SORTIE_LOG_KMS_KEY_ID);
	// empty: S3's choice for aws:kms (the bucket's default key, else aws/s3).
	KMSKeyID string
	// SweepInterval is the period of the orphan sweep (SORTIE_SWEEP_INTERVAL, default 60s).
	SweepInterval time.Duration
	// SweepArchiveTimeout bounds the best-effort archive of an instance the sweep
	// terminates (SORTIE_SWEEP_ARCHIVE_TIMEOUT, default 20s).
	SweepArchiveTimeout time.Duration
	// SweepArchiveWindow is how long after its lease expired the sweep still tries to
	// archive an instance's logs before terminating it; later it terminates at once
	// (SORTIE_SWEEP_ARCHIVE_WINDOW, default 10m).
	SweepArchiveWindow time.Duration
	// MetricsFlush is how often the reaper's CloudWatch metrics (ArchiveFailures) are sent
	// (SORTIE_METRICS_FLUSH, default 1s).
	MetricsFlush time.Duration
	// WaiterMinDelay and WaiterMaxDelay bound the polling of the terminated waiter
	// (SORTIE_WAITER_MIN_DELAY default 2s, SORTIE_WAITER_MAX_DELAY default 30s).
	WaiterMinDelay, WaiterMaxDelay time.Duration
	// TerminateTimeout bounds the wait for a fleet's instances to be terminated
	// (SORTIE_TERMINATE_TIMEOUT, default 5m).
	TerminateTimeout time.Duration
	// PollWait is the SQS long poll of the reaper's queues (SORTIE_POLL_WAIT, whole seconds,
	// 1-20 s, default 20 s). kumo does not end a long poll when a delayed message becomes
	// visible, so keep it short there: a sweep timer can arrive up to PollWait late.
	PollWait time.Duration
}

// ConfigFromEnv reads the configuration from SORTIE_* variables, with defaults, and
// validates it.
func ConfigFromEnv() (Config, error) {
	cfg := Config{Base: service.BaseFromEnv(), SSHKey: os.Getenv("SORTIE_SSH_KEY"), KMSKeyID: os.Getenv("SORTIE_LOG_KMS_KEY_ID")}
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	cfg.Concurrency, err = intEnv("SORTIE_REAPER_CONCURRENCY", DefaultConcurrency)
	add(err)
	cfg.ArchiveMaxBytes, err = int64Env("SORTIE_ARCHIVE_MAX_BYTES", DefaultArchiveMaxBytes)
	add(err)
	for _, d := range []struct {
		key string
		dst *time.Duration
		def time.Duration
	}{
		{"SORTIE_ARCHIVE_TIMEOUT", &cfg.ArchiveTimeout, DefaultArchiveTimeout},
		{"SORTIE_SWEEP_INTERVAL", &cfg.SweepInterval, DefaultSweepInterval},
		{"SORTIE_SWEEP_ARCHIVE_TIMEOUT", &cfg.SweepArchiveTimeout, DefaultSweepArchiveTimeout},
		{"SORTIE_SWEEP_ARCHIVE_WINDOW", &cfg.SweepArchiveWindow, DefaultSweepArchiveWindow},
		{"SORTIE_METRICS_FLUSH", &cfg.MetricsFlush, DefaultMetricsFlush},
		{"SORTIE_WAITER_MIN_DELAY", &cfg.WaiterMinDelay, DefaultWaiterMinDelay},
		{"SORTIE_WAITER_MAX_DELAY", &cfg.WaiterMaxDelay, DefaultWaiterMaxDelay},
		{"SORTIE_TERMINATE_TIMEOUT", &cfg.TerminateTimeout, DefaultTerminateTimeout},
		{"SORTIE_POLL_WAIT", &cfg.PollWait, DefaultPollWait},
	} {
		*d.dst, err = service.DurationEnv(d.key, d.def)
		add(err)
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	errs := []error{c.Base.Validate()}
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if _, err := sshkey.ParseSource(c.SSHKey); err != nil {
		bad("SORTIE_SSH_KEY: %w", err)
	}
	if c.Concurrency < 1 || c.Concurrency > MaxConcurrency {
		bad("SORTIE_REAPER_CONCURRENCY: %d: want 1-%d", c.Concurrency, MaxConcurrency)
	}
	if c.ArchiveMaxBytes < 1 {
		bad("SORTIE_ARCHIVE_MAX_BYTES: %d: want > 0", c.ArchiveMaxBytes)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"SORTIE_ARCHIVE_TIMEOUT", c.ArchiveTimeout},
		{"SORTIE_SWEEP_INTERVAL", c.SweepInterval},
		{"SORTIE_SWEEP_ARCHIVE_TIMEOUT", c.SweepArchiveTimeout},
		{"SORTIE_SWEEP_ARCHIVE_WINDOW", c.SweepArchiveWindow},
		{"SORTIE_METRICS_FLUSH", c.MetricsFlush},
		{"SORTIE_WAITER_MIN_DELAY", c.WaiterMinDelay},
		{"SORTIE_WAITER_MAX_DELAY", c.WaiterMaxDelay},
		{"SORTIE_TERMINATE_TIMEOUT", c.TerminateTimeout},
	} {
		if d.v <= 0 {
			bad("%s: %s: want > 0", d.key, d.v)
		}
	}
	if c.SweepInterval > 0 && c.SweepInterval < time.Second {
		bad("SORTIE_SWEEP_INTERVAL: %s: want at least 1s (SQS delays are whole seconds)", c.SweepInterval)
	}
	if c.PollWait < time.Second || c.PollWait > 20*time.Second || c.PollWait%time.Second != 0 {
		bad("SORTIE_POLL_WAIT: %s: want whole seconds, 1s-20s", c.PollWait)
	}
	if c.WaiterMinDelay > c.WaiterMaxDelay {
		bad("SORTIE_WAITER_MIN_DELAY %s: want <= SORTIE_WAITER_MAX_DELAY %s", c.WaiterMinDelay, c.WaiterMaxDelay)
	}
	return errors.Join(errs...)
}

// WithDefaults fills the zero fields of a Config built in code (by `sortie dev`, tests).
func (c Config) WithDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = "sortie"
	}
	setInt(&c.Concurrency, DefaultConcurrency)
	if c.ArchiveMaxBytes == 0 {
		c.ArchiveMaxBytes = DefaultArchiveMaxBytes
	}
	setDur(&c.ArchiveTimeout, DefaultArchiveTimeout)
	setDur(&c.SweepInterval, DefaultSweepInterval)
	setDur(&c.SweepArchiveTimeout, DefaultSweepArchiveTimeout)
	setDur(&c.SweepArchiveWindow, DefaultSweepArchiveWindow)
	setDur(&c.MetricsFlush, DefaultMetricsFlush)
	setDur(&c.WaiterMinDelay, DefaultWaiterMinDelay)
	setDur(&c.WaiterMaxDelay, DefaultWaiterMaxDelay)
	setDur(&c.TerminateTimeout, DefaultTerminateTimeout)
	setDur(&c.PollWait, DefaultPollWait)
	return c
}

func setInt(v *int, def int) {
	if *v == 0 {
		*v = def
	}
}

func setDur(v *time.Duration, def time.Duration) {
	if *v == 0 {
		*v = def
	}
}

func intEnv(key string, def int) (int, error) {
	n, err := int64Env(key, int64(def))
	return int(n), err
}

func int64Env(key string, def int64) (int64, error) {
	v := os.Getenv(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not an integer", key, v)
	}
	return n, nil
}
