package opensshd_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/opensshd"
	"github.com/sortie-fleet/sortie/pkg/remote"
)

// hostKey returns a new ed25519 host key as PEM and its public half.
func hostKey(t *testing.T) ([]byte, ssh.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(block), sshPub
}

func TestServer(t *testing.T) {
	if err := opensshd.Available(""); err != nil {
		cloudtest.MissingTool(t, err.Error())
	}
	keyPEM, pub := hostKey(t)
	login := cloudtest.NewSigner(t)
	root := t.TempDir()
	dir := filepath.Join(root, "home")
	srv, err := opensshd.Start(opensshd.Config{
		HostKeyPEM: keyPEM, AuthorizedKeys: []ssh.PublicKey{login.PublicKey()},
		Dir: dir, StateDir: filepath.Join(root, "state"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := remote.DialConfig{Addr: srv.Addr(), User: srv.User(), Signer: login, HostKey: pub}
	c, err := remote.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()

	res, err := c.Run(ctx, `pwd; echo "$HOME"; echo "$0"`, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := dir + "\n" + dir + "\n/bin/sh\n"; string(res.Stdout) != want {
		t.Errorf("pwd, HOME, shell = %q, want %q", res.Stdout, want)
	}
	if err := c.Upload(ctx, "sub/f", 0o640, strings.NewReader("data")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "sub", "f")); err != nil || string(b) != "data" {
		t.Errorf("uploaded file %q, %v", b, err)
	}

	t.Run("only the pinned host key", func(t *testing.T) {
		bad := cfg
		_, bad.HostKey = hostKey(t)
		_, err := remote.Dial(ctx, bad)
		if !errors.Is(err, remote.ErrHostKeyMismatch) {
			t.Errorf("error %v, want ErrHostKeyMismatch", err)
		}
	})
	t.Run("only the login key", func(t *testing.T) {
		bad := cfg
		bad.Signer = cloudtest.NewSigner(t)
		_, err := remote.Dial(ctx, bad)
		if !errors.Is(err, remote.ErrAuth) {
			t.Errorf("error %v, want ErrAuth", err)
		}
	})

	// A detached workload outlives its session, and dies with the server.
	if _, err := c.Run(ctx, `nohup sleep 120 > /dev/null 2>&1 < /dev/null & echo $! > bg.tmp && mv bg.tmp bg`, nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "bg"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("detached workload %d not running after its session: %v", pid, err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if alive(pid) {
		t.Errorf("detached workload %d still running after Close", pid)
	}
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

func TestConfigErrors(t *testing.T) {
	_, err := opensshd.Start(opensshd.Config{Dir: "rel"})
	for _, want := range []string{"HostKeyPEM", "AuthorizedKeys", "Dir", "StateDir"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %s", err, want)
		}
	}
}
