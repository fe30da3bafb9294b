package hostkey

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// The block cloud-init writes to the console at first boot (cc_keys_to_console), one
// public key per line in authorized_keys format.
const (
	ConsoleBegin = "-----BEGIN SSH HOST KEY KEYS-----"
	ConsoleEnd   = "-----END SSH HOST KEY KEYS-----"
)

// ErrNoConsoleKeys says the console output holds no complete host key block: not yet
// (EC2 publishes console output minutes after boot), or never (the image does not print it).
var ErrNoConsoleKeys = errors.New("console output has no " + ConsoleBegin + " block")

// FromConsole returns the public keys of the first host key block of an instance's
// console output: the one cloud-init printed at first boot, before any workload ran. Lines
// that are not a public key are skipped; a block without any key is an error.
func FromConsole(output string) ([]ssh.PublicKey, error) {
	_, rest, ok := strings.Cut(output, ConsoleBegin)
	if !ok {
		return nil, ErrNoConsoleKeys
	}
	block, _, ok := strings.Cut(rest, ConsoleEnd)
	if !ok {
		return nil, fmt.Errorf("%w (it has no end yet)", ErrNoConsoleKeys)
	}
	var keys []ssh.PublicKey
	for _, line := range strings.Split(block, "\n") {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(strings.TrimSpace(line)))
		if err == nil {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("console output's host key block holds no public key")
	}
	return keys, nil
}

// Preferred returns the key Sortie pins among an instance's host keys: ed25519, else
// ECDSA, else RSA; nil when none is of these types.
func Preferred(keys []ssh.PublicKey) ssh.PublicKey {
	rank := func(k ssh.PublicKey) int {
		switch t := k.Type(); {
		case t == ssh.KeyAlgoED25519:
			return 3
		case strings.HasPrefix(t, "ecdsa-sha2-"):
			return 2
		case t == ssh.KeyAlgoRSA:
			return 1
		}
		return 0
	}
	var best ssh.PublicKey
	for _, k := range keys {
		if r := rank(k); r > 0 && (best == nil || r > rank(best)) {
			best = k
		}
	}
	return best
}
