package reaper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	"al.essio.dev/pkg/shellescape"
	"github.com/cenkalti/backoff/v5"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/archive"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/remote"
)

// ArchiveKey is the S3 key of an instance's log archive.
func ArchiveKey(jobID, instanceID string) string {
	return "logs/" + safeKeyPart(jobID) + "/" + instanceID + ".tar.gz"
}

var keyPartRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// safeKeyPart keeps a job id read from a tag (not validated like an event's) from making a
// strange key: anything but an id becomes "_invalid".
func safeKeyPart(s string) string {
	if !keyPartRE.MatchString(s) || s == "." || s == ".." {
		return "_invalid"
	}
	return s
}

// session is an SSH connection to one instance.
type session interface {
	Stream(ctx context.Context, cmd string, stdin io.Reader, w io.Writer) (remote.Result, error)
	Close() error
}

var _ session = (*remote.Client)(nil)

// dialFunc connects to an instance: remote.Dial, or a fake in tests.
type dialFunc func(ctx context.Context, cfg remote.DialConfig) (session, error)

func dialRemote(ctx context.Context, cfg remote.DialConfig) (session, error) {
	c, err := remote.Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// archiveCommand makes a tar.gz of the login directory's .sortie, and of those of logs
// (paths relative to the login directory) that exist, on its standard output. The logs
// that exist are added to the positional parameters after .sortie: tar exits 2 on a
// missing file, and a log a workload never wrote must not fail the archive.
func archiveCommand(logs []string) string {
	q := shellescape.Quote
	var quoted []string
	for _, p := range extraLogs(logs) {
		quoted = append(quoted, q(p))
	}
	if len(quoted) == 0 {
		return fmt.Sprintf("umask 077; mkdir -p %[1]s && tar czf - %[1]s", q(recipe.StateRoot))
	}
	return fmt.Sprintf("umask 077; mkdir -p %[1]s && set -- %[1]s && "+
		`for p in %[2]s; do if [ -e "$p" ]; then set -- "$@" "$p"; fi; done && tar czf - "$@"`,
		q(recipe.StateRoot), strings.Join(quoted, " "))
}

// streamArchive runs archiveCommand on the instance with its output written to w as it
// arrives. GNU tar exits 1 when a file changed while it was read (a live workload's log):
// the archive is still complete up to that point (pkg/archive checks it), so 1 is success.
func streamArchive(ctx context.Context, s session, logs []string, w io.Writer) error {
	res, err := s.Stream(ctx, archiveCommand(logs), nil, w)
	if err != nil {
		return fmt.Errorf("streaming archive: %w", err)
	}
	if res.ExitCode != 0 && res.ExitCode != 1 {
		return fmt.Errorf("creating archive: exit status %d: %s", res.ExitCode, strings.Join(remote.Tail(res.Stderr, 3), "; "))
	}
	return nil
}

// extraLogs returns the logs to archive besides recipe.StateRoot: cleaned, outside it,
// relative without a ".." element (JobFinished's validation already says so; this keeps
// the archive command safe on its own), once each, a leading "-" made "./-" so that tar
// cannot read a path as an option.
func extraLogs(logs []string) []string {
	var out []string
	for _, l := range logs {
		p := path.Clean(l)
		switch {
		case l == "", p == ".", path.IsAbs(p), p == "..", strings.HasPrefix(p, "../"),
			p == recipe.StateRoot, strings.HasPrefix(p, recipe.StateRoot+"/"):
			continue
		}
		if strings.HasPrefix(p, "-") {
			p = "./" + p
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// target is an instance whose logs are to be archived.
type target struct {
	InstanceID string
	JobID      string
	Addr       string        // host:port
	User       string        // login user
	HostKey    ssh.PublicKey // pinned; nil: unknown, so the logs cannot be archived
	Logs       []string      // workload logs outside .sortie, from JobFinished.Logs
}

// archiver copies instances' logs to S3.
type archiver struct {
	dial     dialFunc
	signer   ssh.Signer
	store    archive.Store
	maxBytes int64
	backoff  func() backoff.BackOff // between attempts; nil: exponential from 1s
	// alive, when set, is asked after a failed attempt whether the instance still runs: one
	// that is shutting down or terminated (by another delivery of the same JobFinished, a
	// spot interruption, a person) has no logs left to fetch, so retrying would only hold
	// the handler, and a draining reaper, for the whole timeout.
	alive func(ctx context.Context, instanceID string) (bool, error)
}

// errGone says an instance ended before its logs could be archived.
var errGone = errors.New("the instance is shutting down or terminated: its logs are gone")

// archive archives one instance's logs, trying again with backoff for up to timeout (an
// unreachable instance, a dropped connection, a failed upload); a host key mismatch or a
// refused login key ends it at once.
func (a *archiver) archive(ctx context.Context, t target, timeout time.Duration) (events.Archive, error) {
	if t.HostKey == nil {
		return events.Archive{}, errors.New("host key unknown: not connecting (there is no accept-any mode)")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	newBackoff := a.backoff
	if newBackoff == nil {
		newBackoff = func() backoff.BackOff {
			b := backoff.NewExponentialBackOff()
			b.InitialInterval = time.Second
			b.MaxInterval = 10 * time.Second
			return b
		}
	}
	var last error
	arch, err := backoff.Retry(ctx, func() (events.Archive, error) {
		arch, err := a.archiveOnce(ctx, t)
		if err != nil {
			last = err
			if errors.Is(err, remote.ErrHostKeyMismatch) || errors.Is(err, remote.ErrAuth) || errors.Is(err, archive.ErrTooLarge) {
				return arch, backoff.Permanent(err)
			}
			if a.alive != nil {
				if ok, aerr := a.alive(ctx, t.InstanceID); aerr == nil && !ok {
					return arch, backoff.Permanent(fmt.Errorf("%w (last attempt: %w)", errGone, err))
				}
			}
		}
		return arch, err
	}, backoff.WithBackOff(newBackoff()), backoff.WithMaxElapsedTime(0))
	if err != nil {
		if last != nil && !errors.Is(err, last) {
			err = fmt.Errorf("%w (last attempt: %w)", err, last)
		}
		return events.Archive{}, fmt.Errorf("archiving logs of %s: %w", t.InstanceID, err)
	}
	return arch, nil
}

func (a *archiver) archiveOnce(ctx context.Context, t target) (events.Archive, error) {
	conn, err := a.dial(ctx, remote.DialConfig{Addr: t.Addr, User: t.User, Signer: a.signer, HostKey: t.HostKey})
	if err != nil {
		return events.Archive{}, err
	}
	defer conn.Close()
	res, err := a.store.Put(ctx, ArchiveKey(t.JobID, t.InstanceID), a.maxBytes, func(w io.Writer) error {
		return streamArchive(ctx, conn, t.Logs, w)
	})
	if err != nil {
		return events.Archive{}, err
	}
	res.InstanceID = t.InstanceID
	return res.Archive, nil
}
