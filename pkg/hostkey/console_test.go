package hostkey

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// The seed is exactly HMAC-SHA256(secret, Label ‖ fleet ‖ revision ‖ nonce), each part
// length-prefixed (big-endian uint32): the label separates this use of the secret.
func TestDeriveSeedLayout(t *testing.T) {
	mac := hmac.New(sha256.New, testSecret)
	for _, p := range []string{"sortie fleet ssh host key v2", "job-42", "1", testNonce} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(p)))
		mac.Write(n[:])
		mac.Write([]byte(p))
	}
	want := ed25519.NewKeyFromSeed(mac.Sum(nil))
	if got := derive(t, testSecret, "job-42", 1); !got.Equal(want) {
		t.Fatal("Derive does not follow the documented layout")
	}
	// Without the label (the earlier derivation), the key differs.
	old := hmac.New(sha256.New, testSecret)
	old.Write([]byte("job-42/1"))
	if want.Equal(ed25519.NewKeyFromSeed(old.Sum(nil))) {
		t.Fatal("the labelled derivation gives the unlabelled key")
	}
}

func TestNewNonce(t *testing.T) {
	a, err := NewNonce()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewNonce()
	if err != nil {
		t.Fatal(err)
	}
	if a == b || len(a) != 22 || strings.Trim(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
		t.Errorf("nonces %q and %q: want two different 22-character base64url strings", a, b)
	}
	if _, _, err := Derive(testSecret, "job-1", 1, a); err != nil {
		t.Errorf("Derive refuses NewNonce's nonce: %v", err)
	}
}

func TestFromConsole(t *testing.T) {
	edSigner, err := ssh.NewSignerFromKey(derive(t, testSecret, "job-42", 1))
	if err != nil {
		t.Fatal(err)
	}
	ed := edSigner.PublicKey()
	ecPriv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ssh.NewPublicKey(&ecPriv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	line := func(k ssh.PublicKey) string {
		return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " root@ip-10-0-0-1"
	}
	block := func(lines ...string) string {
		return "[ 0.0] boot\n" + ConsoleBegin + "\n" + strings.Join(lines, "\n") + "\n" + ConsoleEnd + "\nCloud-init finished\n"
	}

	tests := []struct {
		name      string
		output    string
		want      []ssh.PublicKey
		preferred ssh.PublicKey
		noBlock   bool
		wantErr   string
	}{
		{name: "ecdsa and ed25519", output: block(line(ec), line(ed)), want: []ssh.PublicKey{ec, ed}, preferred: ed},
		{name: "ecdsa only", output: block(line(ec)), want: []ssh.PublicKey{ec}, preferred: ec},
		{name: "CRLF and junk lines", output: strings.ReplaceAll(block("#", line(ed), "garbage"), "\n", "\r\n"), want: []ssh.PublicKey{ed}, preferred: ed},
		{name: "first block wins", output: block(line(ed)) + block(line(ec)), want: []ssh.PublicKey{ed}, preferred: ed},
		{name: "no block yet", output: "[ 0.0] booting\n", noBlock: true},
		{name: "empty", output: "", noBlock: true},
		{name: "block not finished", output: "x\n" + ConsoleBegin + "\n" + line(ed) + "\n", noBlock: true},
		{name: "block without keys", output: block("nothing here"), wantErr: "holds no public key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromConsole(tt.output)
			switch {
			case tt.noBlock:
				if !errors.Is(err, ErrNoConsoleKeys) {
					t.Fatalf("FromConsole: %v, want ErrNoConsoleKeys", err)
				}
				return
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || errors.Is(err, ErrNoConsoleKeys) {
					t.Fatalf("FromConsole: %v, want %q", err, tt.wantErr)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("%d keys, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if string(got[i].Marshal()) != string(tt.want[i].Marshal()) {
					t.Errorf("key %d is %s, want %s", i, got[i].Type(), tt.want[i].Type())
				}
			}
			if p := Preferred(got); p == nil || string(p.Marshal()) != string(tt.preferred.Marshal()) {
				t.Errorf("preferred key is not the %s one", tt.preferred.Type())
			}
		})
	}
}
