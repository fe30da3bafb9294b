package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"al.essio.dev/pkg/shellescape"
	"golang.org/x/crypto/ssh"
)

// MaxOutput is how much of each of stdout and stderr Run keeps: the last MaxOutput bytes.
const MaxOutput = 1 << 20

// cancelWait bounds how long Run waits for the server to wind a session down
// after ctx ends.
const cancelWait = 2 * time.Second

// Errors Run wraps when the connection, not the command, failed: a caller redials. The
// command may have run (part of it) unless the error is also ErrNotStarted.
var (
	// ErrConnection: the SSH connection failed under the command (reset, closed, timed out).
	ErrConnection = errors.New("ssh connection lost")
	// ErrNotStarted: no session could be opened, so the command never ran.
	ErrNotStarted = errors.New("command not started")
)

// Result is how a remote command ended.
type Result struct {
	ExitCode  int    // exit status; 128+N when killed by signal N (as a shell reports it)
	Signal    string // the signal that killed the command ("TERM", "KILL"), if one did
	Stdout    []byte // the last MaxOutput bytes of stdout
	Stderr    []byte // the last MaxOutput bytes of stderr
	Truncated bool   // Stdout or Stderr lost its beginning to the MaxOutput cap
	Duration  time.Duration
}

// Run runs cmd through the remote user's shell with stdin (nil: empty) as its
// standard input. A command that exits non-zero is a Result, not an error; the
// error is for transport problems and for ctx ending, which closes the session
// (the server hangs up on the command) and returns what was captured so far.
// The command text is never put into errors: it may hold secrets.
func (c *Client) Run(ctx context.Context, cmd string, stdin io.Reader) (Result, error) {
	stdout := &tailBuffer{max: MaxOutput}
	res, err := c.run(ctx, cmd, stdin, stdout)
	var outTruncated bool
	res.Stdout, outTruncated = stdout.bytes()
	res.Truncated = res.Truncated || outTruncated
	return res, err
}

// Stream runs cmd as Run does, but writes the whole of its standard output to w as it
// arrives instead of keeping it: memory stays bounded by SSH's flow control window
// whatever the output's size, and a slow w slows the command down. Result.Stdout is
// empty. An error from w ends the session; it is returned wrapped.
func (c *Client) Stream(ctx context.Context, cmd string, stdin io.Reader, w io.Writer) (Result, error) {
	return c.run(ctx, cmd, stdin, w)
}

func (c *Client) run(ctx context.Context, cmd string, stdin io.Reader, stdout io.Writer) (Result, error) {
	start := time.Now()
	sess, err := c.c.NewSession()
	if err != nil {
		return Result{}, fmt.Errorf("opening ssh session on %s: %w: %w: %w", c.addr, ErrConnection, ErrNotStarted, err)
	}
	defer sess.Close()
	// A writer that fails ends the command as ctx would: nobody reads its output any more,
	// and once SSH's window is full it would wait for ever.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stderr := &tailBuffer{max: MaxOutput}
	sess.Stdout, sess.Stderr, sess.Stdin = failWriter{w: stdout, fail: cancel}, stderr, stdin
	if err := sess.Start(cmd); err != nil {
		return Result{}, fmt.Errorf("starting command on %s: %w: %w", c.addr, ErrConnection, err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sess.Wait() }()

	var waitErr, ctxErr error
	select {
	case waitErr = <-waited:
	case <-ctx.Done():
		ctxErr = context.Cause(ctx)
		_ = sess.Close()
		select {
		case waitErr = <-waited:
		case <-time.After(cancelWait):
		}
	}
	res := Result{ExitCode: -1, Duration: time.Since(start)}
	res.Stderr, res.Truncated = stderr.bytes() // Run adds stdout's

	var exit *ssh.ExitError
	switch {
	case ctxErr != nil:
		if errors.As(waitErr, &exit) && exit.Signal() == "" {
			res.ExitCode = exit.ExitStatus() // finished just as ctx ended
		}
		return res, fmt.Errorf("running command on %s: %w", c.addr, ctxErr)
	case waitErr == nil:
		res.ExitCode = 0
	case errors.As(waitErr, &exit):
		res.ExitCode, res.Signal = exit.ExitStatus(), exit.Signal()
	default:
		// No exit status: the connection went away under the command.
		return res, fmt.Errorf("running command on %s: %w: %w", c.addr, ErrConnection, waitErr)
	}
	return res, nil
}

// Upload streams r into the file at remotePath (relative paths are relative to
// the login directory), creating missing parent directories (0700), and sets
// mode's permission bits. Every path is shell-quoted; the file is never
// readable by others while it is being written.
func (c *Client) Upload(ctx context.Context, remotePath string, mode os.FileMode, r io.Reader) error {
	if remotePath == "" || strings.HasSuffix(remotePath, "/") {
		return fmt.Errorf("uploading to %s: path %q does not name a file", c.addr, remotePath)
	}
	p := remotePath
	if strings.HasPrefix(p, "-") {
		p = "./" + p // not an option to mkdir or chmod
	}
	q := shellescape.Quote
	cmd := fmt.Sprintf("umask 077; mkdir -p %s && cat > %s && chmod %04o %s",
		q(path.Dir(p)), q(p), uint32(mode.Perm()), q(p))
	res, err := c.Run(ctx, cmd, r)
	if err != nil {
		return fmt.Errorf("uploading %s: %w", remotePath, err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("uploading %s to %s: exit status %d: %s",
			remotePath, c.addr, res.ExitCode, strings.Join(Tail(res.Stderr, 5), "\n"))
	}
	return nil
}

// Tail returns the last n lines of b, without their line endings; a final
// newline does not start an empty line.
func Tail(b []byte, n int) []string {
	if n <= 0 || len(b) == 0 {
		return nil
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	start := len(b)
	for range n {
		i := bytes.LastIndexByte(b[:start], '\n')
		if i < 0 {
			return strings.Split(string(b), "\n")
		}
		start = i
	}
	return strings.Split(string(b[start+1:]), "\n")
}

// tailBuffer keeps the last max bytes written to it. It grows to at most
// twice max before compacting, so appends stay amortised O(1).
type tailBuffer struct {
	mu        sync.Mutex
	max       int
	buf       []byte
	truncated bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) >= t.max {
		t.truncated = t.truncated || len(t.buf) > 0 || len(p) > t.max
		t.buf = append(t.buf[:0], p[len(p)-t.max:]...)
		return n, nil
	}
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*t.max {
		t.buf = t.buf[:copy(t.buf, t.buf[len(t.buf)-t.max:])]
		t.truncated = true
	}
	return n, nil
}

// bytes returns a copy of the last max bytes and whether anything was dropped.
func (t *tailBuffer) bytes() ([]byte, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	truncated := t.truncated
	if len(b) > t.max {
		b, truncated = b[len(b)-t.max:], true
	}
	return bytes.Clone(b), truncated
}

// failWriter passes writes to w and calls fail with the first error.
type failWriter struct {
	w    io.Writer
	fail context.CancelCauseFunc
}

func (f failWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err != nil {
		f.fail(fmt.Errorf("writing the command's output: %w", err))
	}
	return n, err
}
