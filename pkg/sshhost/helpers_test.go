package sshhost_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sortie-fleet/sortie/pkg/remote"
	"github.com/sortie-fleet/sortie/pkg/sshhost"
	"golang.org/x/crypto/ssh"
)

// fixture is one running host plus the keys to reach it.
type fixture struct {
	host       *sshhost.Host
	dir        string
	hostKey    ssh.Signer
	clientKey  ssh.Signer
	clientPriv ed25519.PrivateKey // clientKey's private key, for OpenSSH's key file
}

func newKey(tb testing.TB) ssh.Signer {
	tb.Helper()
	s, _ := newKeyPair(tb)
	return s
}

func newKeyPair(tb testing.TB) (ssh.Signer, ed25519.PrivateKey) {
	tb.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		tb.Fatal(err)
	}
	return s, priv
}

// startHost starts a host authorizing one fresh client key; edit adjusts the
// config before Start. The host is closed at cleanup.
func startHost(tb testing.TB, edit func(*sshhost.Config)) *fixture {
	tb.Helper()
	f := &fixture{dir: tb.TempDir(), hostKey: newKey(tb)}
	f.clientKey, f.clientPriv = newKeyPair(tb)
	cfg := sshhost.Config{
		HostKey:        f.hostKey,
		AuthorizedKeys: []ssh.PublicKey{f.clientKey.PublicKey()},
		Dir:            f.dir,
	}
	if edit != nil {
		edit(&cfg)
	}
	h, err := sshhost.Start(cfg)
	if err != nil {
		tb.Fatalf("starting host: %v", err)
	}
	tb.Cleanup(func() { _ = h.Close() })
	f.host = h
	return f
}

func (f *fixture) dialConfig(user string) remote.DialConfig {
	return remote.DialConfig{
		Addr:    f.host.Addr(),
		User:    user,
		Signer:  f.clientKey,
		HostKey: f.hostKey.PublicKey(),
	}
}

func (f *fixture) dial(tb testing.TB) *remote.Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := remote.Dial(ctx, f.dialConfig("ec2-user"))
	if err != nil {
		tb.Fatalf("dialing host: %v", err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// sshClient is a raw x/crypto client, for requests remote does not make.
func (f *fixture) sshClient(t *testing.T) *ssh.Client {
	t.Helper()
	c, err := ssh.Dial("tcp", f.host.Addr(), &ssh.ClientConfig{
		User:            "ec2-user",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(f.clientKey)},
		HostKeyCallback: ssh.FixedHostKey(f.hostKey.PublicKey()),
		Timeout:         5 * time.Second,
	})
	if err != nil {
		t.Fatalf("dialing host: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func run(t *testing.T, c *remote.Client, cmd string) remote.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Run(ctx, cmd, nil)
	if err != nil {
		t.Fatalf("running %q: %v", cmd, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("running %q: exit %d, stderr %q", cmd, res.ExitCode, res.Stderr)
	}
	return res
}

// readPid reads a pid a command wrote to a file in the host's directory.
func readPid(t *testing.T, path string) int {
	t.Helper()
	var b []byte
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var err error
		if b, err = os.ReadFile(path); err == nil && bytes.HasSuffix(b, []byte("\n")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pid in %s: %q", path, b)
		}
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("pid file %s holds %q", path, b)
	}
	return pid
}

// running reports whether pid is a live process. A zombie is dead: killed
// detached processes are reparented to init, which reaps them in its own time
// (on some container inits, never).
func running(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, os.ErrNotExist) {
		return !procMounted() // exited meanwhile, or no /proc to ask
	}
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || (b[i+2] != 'Z' && b[i+2] != 'X')
}

func procMounted() bool {
	_, err := os.Stat("/proc/self/stat")
	return err == nil
}

// waitGone waits up to d for pid to stop running.
func waitGone(t *testing.T, pid int, d time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(d); running(pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still running after %s", pid, d)
		}
	}
}
