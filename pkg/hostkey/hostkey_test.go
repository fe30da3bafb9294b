package hostkey

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/ssh"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// testSecret is a fixed 32-byte secret: the golden files depend on it.
var testSecret = []byte("0123456789abcdef0123456789abcdef")

// testNonce is a fixed nonce: the golden files depend on it.
const testNonce = "AAECAwQFBgcICQoLDA0ODw"

func derive(t *testing.T, secret []byte, fleet string, rev int) ed25519.PrivateKey {
	t.Helper()
	return deriveNonce(t, secret, fleet, rev, testNonce)
}

func deriveNonce(t *testing.T, secret []byte, fleet string, rev int, nonce string) ed25519.PrivateKey {
	t.Helper()
	priv, signer, err := Derive(secret, fleet, rev, nonce)
	if err != nil {
		t.Fatalf("Derive(%q, %d): %v", fleet, rev, err)
	}
	if !bytes.Equal(signer.PublicKey().(ssh.CryptoPublicKey).CryptoPublicKey().(ed25519.PublicKey), priv.Public().(ed25519.PublicKey)) {
		t.Fatalf("Derive(%q, %d): signer and private key disagree", fleet, rev)
	}
	return priv
}

func TestDeriveIsDeterministicAndSeparatesFleets(t *testing.T) {
	base := derive(t, testSecret, "job-42", 1)
	if again := derive(t, testSecret, "job-42", 1); !base.Equal(again) {
		t.Fatal("the same secret, fleet and revision gave two different keys")
	}
	otherSecret := bytes.Repeat([]byte{7}, 32)
	for name, priv := range map[string]ed25519.PrivateKey{
		"another revision": derive(t, testSecret, "job-42", 2),
		"another fleet":    derive(t, testSecret, "job-43", 1),
		"another secret":   derive(t, otherSecret, "job-42", 1),
		// "job-4" + "/" + "21" must not collide with "job-42" + "/" + "1".
		"shifted separator": derive(t, testSecret, "job-4", 21),
		// A reused job id: the planner gives every plan a fresh nonce.
		"another nonce": deriveNonce(t, testSecret, "job-42", 1, "ZZECAwQFBgcICQoLDA0ODw"),
		"no nonce":      deriveNonce(t, testSecret, "job-42", 1, ""),
	} {
		if base.Equal(priv) {
			t.Errorf("%s gave the same key", name)
		}
	}
}

func TestDeriveRejects(t *testing.T) {
	tests := []struct {
		name    string
		secret  []byte
		fleet   string
		rev     int
		wantErr string
	}{
		{"short secret", make([]byte, 31), "job-1", 1, "secret is 31 bytes, want at least 32"},
		{"no secret", nil, "job-1", 1, "secret is 0 bytes"},
		{"empty fleet", testSecret, "", 1, "empty fleet id"},
		{"revision 0", testSecret, "job-1", 0, "plan revision 0"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			priv, signer, err := Derive(tt.secret, tt.fleet, tt.rev, testNonce)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Derive: error %v, want one containing %q", err, tt.wantErr)
			}
			if priv != nil || signer != nil {
				t.Error("Derive returned a key with its error")
			}
		})
	}
}

func TestMarshalPrivateKeyIsDeterministicOpenSSH(t *testing.T) {
	priv := derive(t, testSecret, "job-42", 1)
	a, err := MarshalPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	b, err := MarshalPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pem.EncodeToMemory(a), pem.EncodeToMemory(b)) {
		t.Fatal("two encodings of the same key differ")
	}
	if a.Type != "OPENSSH PRIVATE KEY" {
		t.Errorf("PEM type %q, want OPENSSH PRIVATE KEY", a.Type)
	}
	parsed, err := ssh.ParseRawPrivateKey(pem.EncodeToMemory(a))
	if err != nil {
		t.Fatalf("x/crypto/ssh cannot parse the encoding: %v", err)
	}
	if got, ok := parsed.(*ed25519.PrivateKey); !ok || !priv.Equal(*got) {
		t.Fatalf("parsed %T, want the same ed25519 key", parsed)
	}

	// Against the library's own (randomised) encoding, only the two check integers differ:
	// 8 bytes at the start of the private section.
	lib, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(lib.Bytes) != len(a.Bytes) {
		t.Fatalf("length %d, x/crypto/ssh writes %d", len(a.Bytes), len(lib.Bytes))
	}
	var diff []int
	for i := range a.Bytes {
		if a.Bytes[i] != lib.Bytes[i] {
			diff = append(diff, i)
		}
	}
	if len(diff) > 0 && (diff[len(diff)-1]-diff[0] >= 8) {
		t.Errorf("bytes %d..%d differ from x/crypto/ssh's encoding; want only the 8 check bytes", diff[0], diff[len(diff)-1])
	}
}

func TestMarshalPrivateKeyRejectsShortKey(t *testing.T) {
	if _, err := MarshalPrivateKey(make(ed25519.PrivateKey, 10)); err == nil {
		t.Fatal("a 10-byte key encoded without error")
	}
}

func TestCloudConfig(t *testing.T) {
	priv := derive(t, testSecret, "job-42", 1)
	got, err := CloudConfig(priv)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "cloud-config.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("CloudConfig differs from %s:\n%s", golden, got)
	}

	if !strings.HasPrefix(got, "#cloud-config\n") {
		t.Fatalf("user data does not start with #cloud-config: %q", got[:20])
	}
	var doc struct {
		SSHKeys map[string]string `yaml:"ssh_keys"`
	}
	if err := yaml.Unmarshal([]byte(got), &doc); err != nil {
		t.Fatalf("user data is not YAML: %v", err)
	}
	signer, err := ssh.ParsePrivateKey([]byte(doc.SSHKeys["ed25519_private"]))
	if err != nil {
		t.Fatalf("ssh_keys.ed25519_private: %v", err)
	}
	wantPub, err := AuthorizedKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if gotPub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))); gotPub != wantPub {
		t.Errorf("private key in user data has public key %s, want %s", gotPub, wantPub)
	}
	if doc.SSHKeys["ed25519_public"] != wantPub {
		t.Errorf("ssh_keys.ed25519_public = %q, want %q", doc.SSHKeys["ed25519_public"], wantPub)
	}
}

// TestOpenSSHReadsKey checks with OpenSSH itself that the encoding is a valid private key
// file: ssh-keygen -y prints its public key.
func TestOpenSSHReadsKey(t *testing.T) {
	keygen, err := exec.LookPath("ssh-keygen")
	if err != nil {
		if os.Getenv("SORTIE_REQUIRE_INTEROP") == "1" {
			t.Fatal("ssh-keygen not found and SORTIE_REQUIRE_INTEROP=1")
		}
		t.Skip("ssh-keygen not installed (apt install openssh-client): OpenSSH interop not checked")
	}
	priv := derive(t, testSecret, "job-42", 1)
	block, err := MarshalPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ssh_host_ed25519_key")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(keygen, "-y", "-f", path).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen -y: %v\n%s", err, out)
	}
	want, _ := AuthorizedKey(priv)
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("ssh-keygen -y printed %q, want %q", got, want)
	}
}

func TestParseSecret(t *testing.T) {
	raw := bytes.Repeat([]byte{0xfb, 0xff, 0x01, 0x7e}, 8) // 32 bytes; base64 needs + and / (or - and _)
	tests := []struct {
		name    string
		in      string
		want    []byte
		wantErr string
	}{
		{"hex", hex.EncodeToString(raw), raw, ""},
		{"hex upper case with spaces around", "  " + strings.ToUpper(hex.EncodeToString(raw)) + "\n", raw, ""},
		{"base64 standard", base64.StdEncoding.EncodeToString(raw), raw, ""},
		{"base64 url unpadded", base64.RawURLEncoding.EncodeToString(raw), raw, ""},
		{"48 bytes of base64", base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 48)), bytes.Repeat([]byte{1}, 48), ""},
		{"empty", "", nil, "empty"},
		{"short hex", hex.EncodeToString(raw[:31]), nil, "31 bytes, want at least 32"},
		{"short base64", base64.StdEncoding.EncodeToString(raw[:16]), nil, "16 bytes"},
		{"neither", "not a secret!", nil, "neither hex nor base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSecret(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("got %x, want %x", got, tt.want)
			}
		})
	}
}

func TestDerivedKeyVerifiesSignatures(t *testing.T) {
	_, signer, err := Derive(testSecret, "job-42", 1, testNonce)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("session id")
	sig, err := signer.Sign(nil, data) // ed25519 ignores the randomness source
	if err != nil {
		t.Fatal(err)
	}
	if err := signer.PublicKey().Verify(data, sig); err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
	if err := signer.PublicKey().Verify([]byte("other"), sig); err == nil {
		t.Fatal("signature verifies for other data")
	}
}
