// Package opsload reads the ops configuration from a file, S3 or SSM Parameter Store and
// keeps it current: re-read on SIGHUP and on an interval, and put in force only when the
// new one is valid.
package opsload

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/sortie-fleet/sortie/pkg/opsconfig"
)

// MaxBytes bounds what a load reads: an ops config is a few KiB; SSM holds 8 KiB at most.
const MaxBytes = 1 << 20

// Location is where the ops config is read from: exactly one of a file (Path), an S3
// object (Bucket, Key) or an SSM parameter (Parameter).
type Location struct {
	Path        string
	Bucket, Key string
	Parameter   string
}

// String renders the location as it is written in SORTIE_CONFIG.
func (l Location) String() string {
	switch {
	case l.Parameter != "":
		return "ssm:" + l.Parameter
	case l.Bucket != "":
		return "s3://" + l.Bucket + "/" + l.Key
	}
	return l.Path
}

// IsFile says the location is a local file.
func (l Location) IsFile() bool { return l.Path != "" }

// ParseLocation parses SORTIE_CONFIG: a file path, "s3://bucket/key" or
// "ssm:/parameter/name" (an SSM parameter name, with or without its leading slash).
func ParseLocation(s string) (Location, error) {
	const want = "want a file path, s3://bucket/key or ssm:/parameter/name"
	switch {
	case s == "":
		return Location{}, errors.New("ops config location is empty: " + want)
	case strings.HasPrefix(s, "s3://"):
		bucket, key, _ := strings.Cut(strings.TrimPrefix(s, "s3://"), "/")
		if bucket == "" || key == "" {
			return Location{}, fmt.Errorf("ops config location %q: want s3://bucket/key with both parts set", s)
		}
		return Location{Bucket: bucket, Key: key}, nil
	case strings.HasPrefix(s, "ssm:"):
		name := strings.TrimPrefix(s, "ssm:")
		if name == "" || name == "/" || strings.HasPrefix(name, "//") {
			return Location{}, fmt.Errorf("ops config location %q: want ssm:/parameter/name", s)
		}
		return Location{Parameter: name}, nil
	case strings.Contains(s, "://"):
		return Location{}, fmt.Errorf("ops config location %q: %s", s, want)
	}
	return Location{Path: s}, nil
}

// The calls a Loader makes, with the SDK's signatures.
type (
	GetObjectAPI interface {
		GetObject(ctx context.Context, params *s3.GetObjectInput, optFns ...func(*s3.Options)) (*s3.GetObjectOutput, error)
	}
	GetParameterAPI interface {
		GetParameter(ctx context.Context, params *ssm.GetParameterInput, optFns ...func(*ssm.Options)) (*ssm.GetParameterOutput, error)
	}
)

var (
	_ GetObjectAPI    = (*s3.Client)(nil)
	_ GetParameterAPI = (*ssm.Client)(nil)
)

// Loader reads and validates the ops config at one location. S3 and SSM are needed only
// for locations of theirs.
type Loader struct {
	Location Location
	S3       GetObjectAPI
	SSM      GetParameterAPI
	// Check, when set, is what the service requires of a configuration beyond
	// opsconfig's own validation (that no recipe may fetch from the secrets bucket, say);
	// a configuration it refuses is invalid.
	Check func(*opsconfig.Config) error
}

// Read returns the raw bytes at the location, at most MaxBytes.
func (l Loader) Read(ctx context.Context) ([]byte, error) {
	loc := l.Location
	var (
		r   io.Reader
		err error
	)
	switch {
	case loc.Parameter != "":
		if l.SSM == nil {
			return nil, fmt.Errorf("reading ops config %s: no SSM client", loc)
		}
		out, err := l.SSM.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(loc.Parameter), WithDecryption: aws.Bool(true)})
		if err != nil {
			return nil, fmt.Errorf("reading ops config %s: %w", loc, err)
		}
		if out.Parameter == nil || out.Parameter.Value == nil {
			return nil, fmt.Errorf("reading ops config %s: parameter has no value", loc)
		}
		r = strings.NewReader(*out.Parameter.Value)
	case loc.Bucket != "":
		if l.S3 == nil {
			return nil, fmt.Errorf("reading ops config %s: no S3 client", loc)
		}
		out, err := l.S3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(loc.Bucket), Key: aws.String(loc.Key)})
		if err != nil {
			return nil, fmt.Errorf("reading ops config %s: %w", loc, err)
		}
		defer out.Body.Close()
		r = out.Body
	case loc.Path != "":
		f, err := os.Open(loc.Path)
		if err != nil {
			return nil, fmt.Errorf("reading ops config: %w", err)
		}
		defer f.Close()
		r = f
	default:
		return nil, errors.New("reading ops config: no location")
	}
	data, err := io.ReadAll(io.LimitReader(r, MaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading ops config %s: %w", loc, err)
	}
	if len(data) > MaxBytes {
		return nil, fmt.Errorf("reading ops config %s: larger than %d bytes", loc, MaxBytes)
	}
	return data, nil
}

// Load reads the ops config and parses and validates it.
func (l Loader) Load(ctx context.Context) (*opsconfig.Config, error) {
	data, err := l.Read(ctx)
	if err != nil {
		return nil, err
	}
	return l.Parse(data)
}

// Parse parses and validates what Read returned, Check included; errors name the location.
func (l Loader) Parse(data []byte) (*opsconfig.Config, error) {
	c, err := opsconfig.Parse(data)
	if err == nil && l.Check != nil {
		err = l.Check(c)
	}
	if err != nil {
		return nil, fmt.Errorf("ops config %s: %w", l.Location, err)
	}
	return c, nil
}

// Result is what one reload did.
type Result string

// Reload results.
const (
	Applied   Result = "applied"   // a new, valid configuration is in force
	Unchanged Result = "unchanged" // the source holds what is in force already
	Rejected  Result = "rejected"  // unreadable or invalid: the configuration in force was kept
)

// Reloader keeps a Holder's configuration current with its location.
type Reloader struct {
	Loader Loader
	Holder *opsconfig.Holder
	// Interval between two reloads; 0: only on a signal.
	Interval time.Duration
	// Signals triggers a reload for every value received (SIGHUP); nil: none.
	Signals <-chan os.Signal
	Logger  *slog.Logger
	// Observe, when set, sees every reload's result (and the time a new config was applied).
	Observe func(r Result, at time.Time)

	last     [sha256.Size]byte // digest of the source in force; zero until the first Prime
	rejected [sha256.Size]byte // digest of the last invalid source, logged once
}

// Prime loads the configuration the service starts with and puts it in the holder
// (creating it when nil). A service does not start on an error.
func (r *Reloader) Prime(ctx context.Context) (*opsconfig.Holder, error) {
	data, err := r.Loader.Read(ctx)
	if err != nil {
		return nil, err
	}
	c, err := r.Loader.Parse(data)
	if err != nil {
		return nil, err
	}
	if r.Holder == nil {
		r.Holder = opsconfig.NewHolder(c)
	} else {
		r.Holder.Store(c)
	}
	r.last = sha256.Sum256(data)
	r.observe(Applied)
	return r.Holder, nil
}

// Reload reads the location again and, when it holds a different and valid
// configuration, puts that in force. A bad one is logged with why, and the configuration
// in force is kept. Reload is not safe for concurrent use: Run calls it.
func (r *Reloader) Reload(ctx context.Context) (Result, error) {
	logger := r.logger().With("ops_config", r.Loader.Location.String())
	data, err := r.Loader.Read(ctx)
	if err != nil {
		logger.Error("ops config not reloaded: keeping the one in force", "error", err.Error())
		r.observe(Rejected)
		return Rejected, err
	}
	sum := sha256.Sum256(data)
	if sum == r.last {
		logger.Debug("ops config unchanged")
		r.observe(Unchanged)
		return Unchanged, nil
	}
	c, err := r.Loader.Parse(data)
	if err != nil {
		if sum == r.rejected {
			logger.Debug("ops config still invalid: keeping the one in force", "error", err.Error())
		} else {
			logger.Error("ops config invalid: keeping the one in force", "error", err.Error())
		}
		r.rejected = sum
		r.observe(Rejected)
		return Rejected, err
	}
	r.Holder.Store(c)
	r.last = sum
	logger.Info("ops config reloaded", "sha256", fmt.Sprintf("%x", sum[:8]),
		"templates", len(c.Templates), "profiles", len(c.Profiles), "recipes", len(c.Recipes))
	r.observe(Applied)
	return Applied, nil
}

// Run reloads on every signal and every Interval until ctx is cancelled.
func (r *Reloader) Run(ctx context.Context) {
	var tick <-chan time.Time
	if r.Interval > 0 {
		t := time.NewTicker(r.Interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
		case <-r.Signals:
			r.logger().Info("reloading the ops config on signal")
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, _ = r.Reload(rctx) // logged
		cancel()
	}
}

func (r *Reloader) observe(res Result) {
	if r.Observe != nil {
		r.Observe(res, time.Now())
	}
}

func (r *Reloader) logger() *slog.Logger {
	if r.Logger == nil {
		return slog.Default()
	}
	return r.Logger
}
