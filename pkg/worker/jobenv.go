package worker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// JobEnvPath is where the bootstrapper leaves the job's ids, relative to the login
// directory ($HOME).
const JobEnvPath = ".sortie/job.env"

// maxJobEnvBytes bounds what LoadJobEnv reads: the file is five short lines.
const maxJobEnvBytes = 64 << 10

// JobEnv are the ids the bootstrapper writes for the workload of one instance.
type JobEnv struct {
	JobID         string // SORTIE_JOB_ID
	CorrelationID string // SORTIE_CORRELATION_ID
	FleetID       string // SORTIE_FLEET_ID
	InstanceID    string // SORTIE_INSTANCE_ID
	Prefix        string // SORTIE_PREFIX: the stack's topology prefix
}

// LoadJobEnv reads home/.sortie/job.env: KEY=VALUE lines with literal values (the file is
// parsed, never sourced by a shell). Blank lines and lines starting with # are skipped,
// unknown keys ignored; every key above is required.
func LoadJobEnv(home string) (JobEnv, error) {
	path := filepath.Join(home, JobEnvPath)
	data, err := readCapped(path, maxJobEnvBytes)
	if err != nil {
		return JobEnv{}, fmt.Errorf("reading job env: %w", err)
	}
	env, err := ParseJobEnv(data)
	if err != nil {
		return JobEnv{}, fmt.Errorf("reading job env %s: %w", path, err)
	}
	return env, nil
}

// ParseJobEnv parses the content of a job.env file (see LoadJobEnv).
func ParseJobEnv(data []byte) (JobEnv, error) {
	var env JobEnv
	fields := map[string]*string{
		"SORTIE_JOB_ID":         &env.JobID,
		"SORTIE_CORRELATION_ID": &env.CorrelationID,
		"SORTIE_FLEET_ID":       &env.FleetID,
		"SORTIE_INSTANCE_ID":    &env.InstanceID,
		"SORTIE_PREFIX":         &env.Prefix,
	}
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			errs = append(errs, fmt.Errorf("line %d: want KEY=VALUE", n))
			continue
		}
		if p, known := fields[strings.TrimSpace(k)]; known {
			*p = v
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	for _, k := range []string{"SORTIE_JOB_ID", "SORTIE_CORRELATION_ID", "SORTIE_FLEET_ID", "SORTIE_INSTANCE_ID", "SORTIE_PREFIX"} {
		if *fields[k] == "" {
			errs = append(errs, fmt.Errorf("%s is missing or empty", k))
		}
	}
	return env, errors.Join(errs...)
}

// Apply copies the ids into cfg.
func (e JobEnv) Apply(cfg *Config) {
	cfg.JobID, cfg.CorrelationID, cfg.FleetID, cfg.InstanceID, cfg.Prefix = e.JobID, e.CorrelationID, e.FleetID, e.InstanceID, e.Prefix
}

func readCapped(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(io.LimitReader(f, max+1)); err != nil {
		return nil, err
	}
	if int64(b.Len()) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b.Bytes(), nil
}
