// Package hostkey makes and reads SSH host keys of fleets: it derives a fleet's key from a
// secret and a per-plan nonce, renders the cloud-init user data that installs it, and reads
// the keys an instance generated itself from the block cloud-init prints to its console.
package hostkey

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
)

// MinSecretBytes is the shortest secret Derive accepts: the HMAC key must be as strong as
// the ed25519 seed it produces.
const MinSecretBytes = 32

// Label separates the derivation of fleet host keys from any other use of the secret.
const Label = "sortie fleet ssh host key v2"

// NonceBytes is the size of NewNonce's nonces before encoding.
const NonceBytes = 16

// NewNonce returns a fresh per-plan nonce: NonceBytes from crypto/rand, base64url.
func NewNonce() (string, error) {
	b := make([]byte, NonceBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("reading a nonce: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Derive returns the host key of one plan of a fleet: the ed25519 key whose seed is
// HMAC-SHA256(secret, Label ‖ fleetID ‖ revision ‖ nonce), each part prefixed with its
// length. Every replica of the provisioner, and every redelivery of the same FleetPlanned,
// derives the same key; the planner's per-plan nonce makes it differ between submissions
// of the same job id, so the secret and a job id alone never determine a key. An empty
// nonce (a plan of the earlier form, without one) is allowed; pkg/events checks the form of
// the nonces plans carry.
func Derive(secret []byte, fleetID string, revision int, nonce string) (ed25519.PrivateKey, ssh.Signer, error) {
	var errs []error
	if len(secret) < MinSecretBytes {
		errs = append(errs, fmt.Errorf("secret is %d bytes, want at least %d", len(secret), MinSecretBytes))
	}
	if fleetID == "" {
		errs = append(errs, errors.New("empty fleet id"))
	}
	if revision < 1 {
		errs = append(errs, fmt.Errorf("plan revision %d, want ≥ 1", revision))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, fmt.Errorf("deriving host key: %w", err)
	}
	mac := hmac.New(sha256.New, secret)
	for _, part := range []string{Label, fleetID, strconv.Itoa(revision), nonce} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(part)))
		mac.Write(n[:])
		mac.Write([]byte(part))
	}
	priv := ed25519.NewKeyFromSeed(mac.Sum(nil))
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, nil, fmt.Errorf("deriving host key: %w", err)
	}
	return priv, signer, nil
}

// AuthorizedKey returns the public half of priv in authorized_keys format, without a
// trailing newline: what FleetLaunched.HostKey carries.
func AuthorizedKey(priv ed25519.PrivateKey) (string, error) {
	pub, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		return "", fmt.Errorf("encoding host public key: %w", err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))), nil
}

// CloudConfig returns the cloud-init user data that installs priv as the instance's
// ed25519 SSH host key:
//
//	#cloud-config
//	ssh_keys:
//	  ed25519_private: |
//	    -----BEGIN OPENSSH PRIVATE KEY-----
//	    ...
//	  ed25519_public: ssh-ed25519 AAAA...
//
// The output is a function of priv alone (see MarshalPrivateKey), so the RunInstances
// request of a redelivered FleetPlanned is byte-for-byte the same.
func CloudConfig(priv ed25519.PrivateKey) (string, error) {
	block, err := MarshalPrivateKey(priv)
	if err != nil {
		return "", err
	}
	public, err := AuthorizedKey(priv)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("#cloud-config\nssh_keys:\n  ed25519_private: |\n")
	for _, line := range strings.Split(strings.TrimSuffix(string(pem.EncodeToMemory(block)), "\n"), "\n") {
		b.WriteString("    " + line + "\n")
	}
	b.WriteString("  ed25519_public: " + public + "\n")
	return b.String(), nil
}

// openSSHKey and openSSHPrivateSection mirror the unencrypted "openssh-key-v1" format
// (PROTOCOL.key in OpenSSH) as x/crypto/ssh writes it.
type openSSHKey struct {
	CipherName   string
	KdfName      string
	KdfOpts      string
	NumKeys      uint32
	PubKey       []byte
	PrivKeyBlock []byte
}

type openSSHPrivateSection struct {
	Check1 uint32
	Check2 uint32
	Rest   []byte `ssh:"rest"`
}

const openSSHMagic = "openssh-key-v1\x00"

// MarshalPrivateKey encodes priv as an unencrypted OpenSSH private key with
// ssh.MarshalPrivateKey, then replaces the two random "check" integers it writes (which
// only detect a wrong passphrase on encrypted keys) with ones derived from the public key,
// so that the same key always encodes to the same PEM.
func MarshalPrivateKey(priv ed25519.PrivateKey) (*pem.Block, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("encoding host key: ed25519 private key is %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, fmt.Errorf("encoding host key: %w", err)
	}
	body, ok := bytes.CutPrefix(block.Bytes, []byte(openSSHMagic))
	if !ok {
		return nil, errors.New("encoding host key: not an openssh-key-v1 key")
	}
	var key openSSHKey
	if err := ssh.Unmarshal(body, &key); err != nil {
		return nil, fmt.Errorf("encoding host key: %w", err)
	}
	var section openSSHPrivateSection
	if key.CipherName != "none" || ssh.Unmarshal(key.PrivKeyBlock, &section) != nil {
		return nil, errors.New("encoding host key: unexpected openssh-key-v1 layout")
	}
	sum := sha256.Sum256(priv.Public().(ed25519.PublicKey))
	section.Check1 = binary.BigEndian.Uint32(sum[:4])
	section.Check2 = section.Check1
	key.PrivKeyBlock = ssh.Marshal(section)
	block.Bytes = append([]byte(openSSHMagic), ssh.Marshal(key)...)
	return block, nil
}

// ParseSecret decodes SORTIE_HOSTKEY_SECRET: hex when the value is valid hex, base64
// (standard or URL alphabet, padded or not) otherwise. The result must be at least
// MinSecretBytes long.
func ParseSecret(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("host key secret is empty")
	}
	secret, err := hex.DecodeString(s)
	if err != nil {
		secret, err = decodeBase64(s)
		if err != nil {
			return nil, errors.New("host key secret is neither hex nor base64")
		}
	}
	if len(secret) < MinSecretBytes {
		return nil, fmt.Errorf("host key secret is %d bytes, want at least %d (e.g. `openssl rand -hex 32`)", len(secret), MinSecretBytes)
	}
	return secret, nil
}

func decodeBase64(s string) ([]byte, error) {
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		var b []byte
		if b, err = enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, err
}
