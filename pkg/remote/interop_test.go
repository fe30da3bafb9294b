package remote_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/remote"
)

const sshdPath = "/usr/sbin/sshd"

// sshd is Debian's OpenSSH server started by a test on a loopback port.
type sshd struct {
	addr     string
	hostKeys map[string]ssh.PublicKey // "ed25519", "ecdsa", "rsa"
	stderr   *cloudtest.Buffer
}

// startSSHD runs /usr/sbin/sshd -D -e with its own config, host key and
// authorized_keys (holding authorized), logging in as the current user. It
// skips without sshd, unless SORTIE_REQUIRE_INTEROP=1.
func startSSHD(t *testing.T, authorized ssh.PublicKey) *sshd {
	t.Helper()
	if _, err := os.Stat(sshdPath); err != nil {
		cloudtest.MissingTool(t, fmt.Sprintf("%s not found (install openssh-server to run the OpenSSH interop test): %v", sshdPath, err))
	}
	if os.Geteuid() == 0 {
		// sshd's privilege separation directory; Debian creates it at boot.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("creating /run/sshd: %v", err)
		}
	}
	dir := t.TempDir()
	// Three host keys, as a stock sshd has: pinning one of them must work
	// whatever the client's default algorithm preference.
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024) // small: only algorithm negotiation is under test
	if err != nil {
		t.Fatal(err)
	}
	var hostKeyLines []string
	hostKeys := map[string]ssh.PublicKey{}
	for name, priv := range map[string]crypto.Signer{"ed25519": edKey, "ecdsa": ecKey, "rsa": rsaKey} {
		block, err := ssh.MarshalPrivateKey(priv, "sortie test sshd")
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, "ssh_host_"+name+"_key")
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		pub, err := ssh.NewPublicKey(priv.Public())
		if err != nil {
			t.Fatal(err)
		}
		hostKeys[name] = pub
		hostKeyLines = append(hostKeyLines, "HostKey "+file)
	}
	authFile := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authFile, ssh.MarshalAuthorizedKey(authorized), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := cloudtest.FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	cfgFile := filepath.Join(dir, "sshd_config")
	cfg := strings.Join(append(hostKeyLines,
		"Port "+port,
		"ListenAddress 127.0.0.1",
		"AuthorizedKeysFile "+authFile,
		"PidFile "+filepath.Join(dir, "sshd.pid"),
		"StrictModes no",
		"UsePAM no",
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PermitRootLogin prohibit-password",
		"LogLevel VERBOSE",
		"",
	), "\n")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	stderr := &cloudtest.Buffer{}
	cmd := exec.Command(sshdPath, "-D", "-e", "-f", cfgFile)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting sshd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("sshd stderr:\n%s", stderr.String())
		}
	})

	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("sshd exited before listening: %v\nstderr:\n%s", err, stderr.String())
		default:
		}
		if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd not listening on %s after 10s\nstderr:\n%s", addr, stderr.String())
		}
	}
	return &sshd{addr: addr, hostKeys: hostKeys, stderr: stderr}
}

// TestOpenSSHServer runs Sortie's client against Debian's sshd.
func TestOpenSSHServer(t *testing.T) {
	clientKey := cloudtest.NewSigner(t)
	srv := startSSHD(t, clientKey.PublicKey())
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	cfg := remote.DialConfig{Addr: srv.addr, User: u.Username, Signer: clientKey, HostKey: srv.hostKeys["ed25519"]}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := remote.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial: %v\nsshd stderr:\n%s", err, srv.stderr.String())
	}
	defer c.Close()

	t.Run("run", func(t *testing.T) {
		res, err := c.Run(ctx, "echo hi; echo err >&2; whoami; exit 3", nil)
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		if res.ExitCode != 3 || string(res.Stdout) != "hi\n"+u.Username+"\n" || string(res.Stderr) != "err\n" {
			t.Errorf("exit %d stdout %q stderr %q", res.ExitCode, res.Stdout, res.Stderr)
		}
	})
	t.Run("upload", func(t *testing.T) {
		target := filepath.Join(t.TempDir(), "sub dir", "a b;$(touch pwned)")
		content := strings.Repeat("payload\n", 50000)
		if err := c.Upload(ctx, target, 0o640, strings.NewReader(content)); err != nil {
			t.Fatalf("Upload: %v", err)
		}
		got, err := os.ReadFile(target)
		if err != nil || string(got) != content {
			t.Fatalf("uploaded file: %d bytes (want %d), %v", len(got), len(content), err)
		}
		if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o640 {
			t.Errorf("mode %v %v, want 0640", fi.Mode().Perm(), err)
		}
		if matches, _ := filepath.Glob(filepath.Join(filepath.Dir(target), "pwned")); len(matches) > 0 {
			t.Errorf("the file name was executed: %v", matches)
		}
	})
	t.Run("killed by signal", func(t *testing.T) {
		res, err := c.Run(ctx, "kill -KILL $$", nil)
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		if res.ExitCode != 128+9 || res.Signal != "KILL" {
			t.Errorf("exit %d signal %q, want 137 KILL", res.ExitCode, res.Signal)
		}
	})
	t.Run("any of the server's host keys can be pinned", func(t *testing.T) {
		for name, key := range srv.hostKeys {
			pinned := cfg
			pinned.HostKey = key
			c, err := remote.Dial(ctx, pinned)
			if err != nil {
				t.Errorf("pinning the %s host key: %v", name, err)
				continue
			}
			c.Close()
		}
	})
	t.Run("wrong pinned host key", func(t *testing.T) {
		bad := cfg
		bad.HostKey = cloudtest.NewSigner(t).PublicKey()
		_, err := remote.Dial(ctx, bad)
		if !errors.Is(err, remote.ErrHostKeyMismatch) {
			t.Errorf("error %v, want ErrHostKeyMismatch", err)
		}
	})
	t.Run("unknown client key", func(t *testing.T) {
		bad := cfg
		bad.Signer = cloudtest.NewSigner(t)
		_, err := remote.Dial(ctx, bad)
		if !errors.Is(err, remote.ErrAuth) {
			t.Errorf("error %v, want ErrAuth", err)
		}
	})
}
