package sshhost_test

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// requireBinary returns path if it is executable; otherwise it skips the test
// or, with SORTIE_REQUIRE_INTEROP=1 (CI), fails it.
func requireBinary(t *testing.T, path, pkg string) string {
	t.Helper()
	if _, err := exec.LookPath(path); err != nil {
		msg := path + " not found (install " + pkg + " to run the OpenSSH interop test): " + err.Error()
		if os.Getenv("SORTIE_REQUIRE_INTEROP") == "1" {
			t.Fatal(msg + "; SORTIE_REQUIRE_INTEROP=1 makes it required")
		}
		t.Skip(msg)
	}
	return path
}

// writePrivateKey writes key in OpenSSH format, mode 0600 as ssh demands.
func writePrivateKey(t *testing.T, path string, key any) {
	t.Helper()
	block, err := ssh.MarshalPrivateKey(key, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestOpenSSHClient logs into a Host with Debian's ssh client, pinning the
// host key through a known_hosts file.
func TestOpenSSHClient(t *testing.T) {
	sshBin := requireBinary(t, "/usr/bin/ssh", "openssh-client")
	f := startHost(t, nil)
	keyPath := filepath.Join(t.TempDir(), "id_ed25519")
	writePrivateKey(t, keyPath, f.clientPriv)
	port := f.host.Addr()[strings.LastIndexByte(f.host.Addr(), ':')+1:]

	runSSH := func(t *testing.T, keyFile string, knownHost ssh.PublicKey, stdin string, command string) (stdout, stderr string, code int) {
		t.Helper()
		kh := filepath.Join(t.TempDir(), "known_hosts")
		line := knownhosts.Line([]string{knownhosts.Normalize(f.host.Addr())}, knownHost)
		if err := os.WriteFile(kh, []byte(line+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, sshBin,
			"-F", "/dev/null",
			"-i", keyFile,
			"-o", "IdentitiesOnly=yes",
			"-o", "UserKnownHostsFile="+kh,
			"-o", "GlobalKnownHostsFile=/dev/null",
			"-o", "StrictHostKeyChecking=yes",
			"-o", "BatchMode=yes",
			"-o", "LogLevel=ERROR",
			"-p", port,
			"ec2-user@127.0.0.1", command)
		cmd.Stdin = strings.NewReader(stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("running ssh: %v (stderr %q)", err, errb.String())
		}
		return out.String(), errb.String(), cmd.ProcessState.ExitCode()
	}

	t.Run("runs a command with the pinned host key", func(t *testing.T) {
		out, errOut, code := runSSH(t, keyPath, f.hostKey.PublicKey(), "", `echo "hi $USER"; pwd; echo oops >&2; exit 7`)
		if code != 7 {
			t.Errorf("exit %d, want 7 (stderr %q)", code, errOut)
		}
		if want := "hi ec2-user\n" + f.dir + "\n"; out != want {
			t.Errorf("stdout %q, want %q", out, want)
		}
		if errOut != "oops\n" {
			t.Errorf("stderr %q, want %q", errOut, "oops\n")
		}
	})
	t.Run("stdin upload through cat", func(t *testing.T) {
		payload := strings.Repeat("sortie\n", 10000)
		out, errOut, code := runSSH(t, keyPath, f.hostKey.PublicKey(), payload, `cat > uploaded && wc -c < uploaded`)
		if code != 0 || strings.TrimSpace(out) != strconv.Itoa(len(payload)) {
			t.Errorf("exit %d stdout %q stderr %q, want %d bytes", code, out, errOut, len(payload))
		}
		got, err := os.ReadFile(filepath.Join(f.dir, "uploaded"))
		if err != nil || string(got) != payload {
			t.Errorf("uploaded file: %d bytes, %v", len(got), err)
		}
	})
	t.Run("wrong known_hosts entry is refused", func(t *testing.T) {
		out, errOut, code := runSSH(t, keyPath, newKey(t).PublicKey(), "", "echo should-not-run")
		if code != 255 {
			t.Errorf("exit %d, want 255", code)
		}
		if out != "" {
			t.Errorf("command ran: stdout %q", out)
		}
		if !strings.Contains(errOut, "Host key verification failed") {
			t.Errorf("stderr %q does not report the host key failure", errOut)
		}
	})
	t.Run("unknown client key is refused", func(t *testing.T) {
		otherKey := filepath.Join(t.TempDir(), "id_other")
		_, priv := newKeyPair(t)
		writePrivateKey(t, otherKey, priv)
		_, errOut, code := runSSH(t, otherKey, f.hostKey.PublicKey(), "", "true")
		if code != 255 || !strings.Contains(errOut, "Permission denied (publickey)") {
			t.Errorf("exit %d stderr %q, want 255 and Permission denied (publickey)", code, errOut)
		}
	})
}
