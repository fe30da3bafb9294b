package reaper

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"al.essio.dev/pkg/shellescape"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/cenkalti/backoff/v5"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/recipe"
	"github.com/sortie-fleet/sortie/pkg/remote"
)

// ChunkBytes is how much of an archive one SSH command reads: under remote.MaxOutput, the
// most remote.Run keeps of a command's output.
const ChunkBytes = 512 << 10

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
	Run(ctx context.Context, cmd string, stdin io.Reader) (remote.Result, error)
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

// errNoRetry marks archive errors that trying again cannot fix.
var errNoRetry = errors.New("not retryable")

// fetchArchive makes a tar.gz of the login directory's .sortie, and of those of logs (paths
// relative to the login directory) that exist, on the instance and copies it here. The
// archive is written to a file first (remote.Run keeps at most remote.MaxOutput of a
// command's output, so it cannot stream it whole) and read back in ChunkBytes pieces; the
// file is removed afterwards. What arrives is checked to be a complete tar.gz.
func fetchArchive(ctx context.Context, s session, logs []string, maxBytes int64) ([]byte, error) {
	q := shellescape.Quote
	tmp := ".sortie-archive-" + rand.Text() + ".tar.gz" // outside .sortie: not in itself
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, _ = s.Run(ctx, "rm -f "+q(tmp), nil)
	}()
	// The logs that exist are added to the positional parameters after .sortie: tar exits
	// 2 on a missing file, and a log a workload never wrote must not fail the archive.
	// GNU tar exits 1 when a file changed while it was read (a live workload's log): the
	// archive is still complete up to that point, and checked below.
	var quoted []string
	for _, p := range extraLogs(logs) {
		quoted = append(quoted, q(p))
	}
	var cmd string
	if len(quoted) == 0 {
		cmd = fmt.Sprintf("umask 077; mkdir -p %[1]s && { tar czf %[2]s %[1]s; test $? -le 1; } && wc -c < %[2]s",
			q(recipe.StateRoot), q(tmp))
	} else {
		cmd = fmt.Sprintf("umask 077; mkdir -p %[1]s && set -- %[1]s && "+
			`for p in %[3]s; do if [ -e "$p" ]; then set -- "$@" "$p"; fi; done && `+
			`{ tar czf %[2]s "$@"; test $? -le 1; } && wc -c < %[2]s`,
			q(recipe.StateRoot), q(tmp), strings.Join(quoted, " "))
	}
	res, err := s.Run(ctx, cmd, nil)
	if err != nil {
		return nil, fmt.Errorf("creating archive: %w", err)
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("creating archive: exit status %d: %s", res.ExitCode, strings.Join(remote.Tail(res.Stderr, 3), "; "))
	}
	size, err := strconv.ParseInt(strings.TrimSpace(string(res.Stdout)), 10, 64)
	if err != nil || size <= 0 {
		return nil, fmt.Errorf("creating archive: unexpected size %q", strings.TrimSpace(string(res.Stdout)))
	}
	if size > maxBytes {
		return nil, fmt.Errorf("%w: archive is %d bytes, limit %d (SORTIE_ARCHIVE_MAX_BYTES)", errNoRetry, size, maxBytes)
	}
	data := make([]byte, 0, size)
	for off := int64(0); off < size; off += ChunkBytes {
		want := min(ChunkBytes, size-off)
		res, err := s.Run(ctx, fmt.Sprintf("dd if=%s bs=%d skip=%d count=1 2> /dev/null", q(tmp), ChunkBytes, off/ChunkBytes), nil)
		if err != nil {
			return nil, fmt.Errorf("reading archive at %d: %w", off, err)
		}
		if res.ExitCode != 0 || int64(len(res.Stdout)) != want || res.Truncated {
			return nil, fmt.Errorf("reading archive at %d: exit status %d, %d bytes, want %d", off, res.ExitCode, len(res.Stdout), want)
		}
		data = append(data, res.Stdout...)
	}
	if _, err := checkTarGz(data); err != nil {
		return nil, fmt.Errorf("archive copied from the instance: %w", err)
	}
	return data, nil
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

// checkTarGz reads a whole tar.gz and returns the names of its entries.
func checkTarGz(data []byte) ([]string, error) {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("not gzip: %w", err)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("not a complete tar: %w", err)
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return nil, fmt.Errorf("not a complete tar: %s: %w", h.Name, err)
		}
		names = append(names, h.Name)
	}
	if err := zr.Close(); err != nil {
		return nil, fmt.Errorf("not gzip: %w", err)
	}
	if len(names) == 0 {
		return nil, errors.New("empty tar")
	}
	return names, nil
}

// ObjectAPI is the S3 calls archiving makes.
type ObjectAPI interface {
	PutObject(ctx context.Context, params *s3.PutObjectInput, optFns ...func(*s3.Options)) (*s3.PutObjectOutput, error)
	HeadObject(ctx context.Context, params *s3.HeadObjectInput, optFns ...func(*s3.Options)) (*s3.HeadObjectOutput, error)
}

var _ ObjectAPI = (*s3.Client)(nil)

// store uploads archives with SSE-KMS and verifies them.
type store struct {
	api      ObjectAPI
	bucket   string
	kmsKeyID string
}

// put uploads data to key, then verifies the object (size, SSE-KMS) before anything else
// may rely on it.
func (st store) put(ctx context.Context, key string, data []byte) (events.Archive, error) {
	in := &s3.PutObjectInput{
		Bucket:               aws.String(st.bucket),
		Key:                  aws.String(key),
		Body:                 bytes.NewReader(data),
		ContentLength:        aws.Int64(int64(len(data))),
		ContentType:          aws.String("application/gzip"),
		ServerSideEncryption: s3types.ServerSideEncryptionAwsKms,
	}
	if st.kmsKeyID != "" {
		in.SSEKMSKeyId = aws.String(st.kmsKeyID)
	}
	if _, err := st.api.PutObject(ctx, in); err != nil {
		return events.Archive{}, fmt.Errorf("uploading s3://%s/%s: %w", st.bucket, key, err)
	}
	return st.verify(ctx, key, int64(len(data)))
}

// verify checks that the object at key exists, is encrypted with aws:kms and, when want is
// not negative, holds want bytes.
func (st store) verify(ctx context.Context, key string, want int64) (events.Archive, error) {
	head, err := st.api.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(st.bucket), Key: aws.String(key)})
	if err != nil {
		return events.Archive{}, fmt.Errorf("verifying s3://%s/%s: %w", st.bucket, key, err)
	}
	got := aws.ToInt64(head.ContentLength)
	if want >= 0 && got != want {
		return events.Archive{}, fmt.Errorf("verifying s3://%s/%s: %d bytes stored, %d uploaded", st.bucket, key, got, want)
	}
	if head.ServerSideEncryption != s3types.ServerSideEncryptionAwsKms {
		return events.Archive{}, fmt.Errorf("verifying s3://%s/%s: server-side encryption %q, want aws:kms", st.bucket, key, head.ServerSideEncryption)
	}
	return events.Archive{Bucket: st.bucket, Key: key, SizeBytes: got}, nil
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
	store    store
	maxBytes int64
	backoff  func() backoff.BackOff // between attempts; nil: exponential from 1s
}

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
			if errors.Is(err, remote.ErrHostKeyMismatch) || errors.Is(err, remote.ErrAuth) || errors.Is(err, errNoRetry) {
				return arch, backoff.Permanent(err)
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
	data, err := fetchArchive(ctx, conn, t.Logs, a.maxBytes)
	if err != nil {
		return events.Archive{}, err
	}
	arch, err := a.store.put(ctx, ArchiveKey(t.JobID, t.InstanceID), data)
	if err != nil {
		return events.Archive{}, err
	}
	arch.InstanceID = t.InstanceID
	return arch, nil
}
