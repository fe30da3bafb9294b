package localcloud

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/ssh"
)

// cloudConfig is the part of a #cloud-config document the local cloud honours.
type cloudConfig struct {
	SSHKeys map[string]string `yaml:"ssh_keys"`
}

// hostKeyPreference is the order cloud-init's ssh_keys private keys are tried in.
var hostKeyPreference = []string{"ed25519_private", "ecdsa_private", "rsa_private"}

// hostKeyFromUserData returns the SSH host key that user data hands the instance through
// cloud-init's ssh_keys, or nil when it hands none. User data may be gzipped and may be a
// MIME multi-part archive, as cloud-init accepts.
func hostKeyFromUserData(userData []byte) (ssh.Signer, error) {
	doc, err := cloudConfigDocument(userData)
	if err != nil || doc == nil {
		return nil, err
	}
	var cfg cloudConfig
	if err := yaml.Unmarshal(doc, &cfg); err != nil {
		return nil, fmt.Errorf("parsing #cloud-config: %w", err)
	}
	for _, name := range hostKeyPreference {
		pemText, ok := cfg.SSHKeys[name]
		if !ok {
			continue
		}
		signer, err := ssh.ParsePrivateKey([]byte(pemText))
		if err != nil {
			return nil, fmt.Errorf("parsing ssh_keys.%s: %w", name, err)
		}
		return signer, nil
	}
	return nil, nil
}

// hostKeyPEMFromUserData returns the private host key that cloud-init's ssh_keys hands the
// instance (in hostKeyPreference order) as PEM, or nil when user data holds none.
func hostKeyPEMFromUserData(userData []byte) ([]byte, error) {
	doc, err := cloudConfigDocument(userData)
	if err != nil || doc == nil {
		return nil, err
	}
	var cfg cloudConfig
	if err := yaml.Unmarshal(doc, &cfg); err != nil {
		return nil, fmt.Errorf("parsing #cloud-config: %w", err)
	}
	for _, name := range hostKeyPreference {
		if pemText, ok := cfg.SSHKeys[name]; ok {
			return []byte(pemText), nil
		}
	}
	return nil, nil
}

// cloudConfigDocument returns the #cloud-config document in user data, or nil.
func cloudConfigDocument(userData []byte) ([]byte, error) {
	if bytes.HasPrefix(userData, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(userData))
		if err != nil {
			return nil, fmt.Errorf("decompressing user data: %w", err)
		}
		if userData, err = io.ReadAll(io.LimitReader(zr, 1<<20)); err != nil {
			return nil, fmt.Errorf("decompressing user data: %w", err)
		}
	}
	if bytes.HasPrefix(userData, []byte("#cloud-config")) {
		return userData, nil
	}
	if !bytes.HasPrefix(userData, []byte("Content-Type:")) && !bytes.HasPrefix(userData, []byte("MIME-Version:")) {
		return nil, nil
	}
	msg, err := mail.ReadMessage(bytes.NewReader(userData))
	if err != nil {
		return nil, fmt.Errorf("reading multi-part user data: %w", err)
	}
	mediaType, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(mediaType, "multipart/") {
		return nil, nil
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading multi-part user data: %w", err)
		}
		if ct, _, _ := mime.ParseMediaType(part.Header.Get("Content-Type")); ct == "text/cloud-config" {
			return io.ReadAll(io.LimitReader(part, 1<<20))
		}
	}
}

// consoleOutput renders a boot log ending with cloud-init's host key blocks, which tools
// read to pin host keys they did not generate.
func consoleOutput(privateIP string, launched time.Time, hostKey ssh.PublicKey) string {
	hostname := "ip-" + strings.ReplaceAll(privateIP, ".", "-")
	keyType := strings.ToUpper(strings.TrimPrefix(strings.TrimPrefix(hostKey.Type(), "ssh-"), "ecdsa-sha2-"))
	if strings.HasPrefix(hostKey.Type(), "ecdsa-") {
		keyType = "ECDSA"
	}
	authorized := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostKey)))

	var b strings.Builder
	w := bufio.NewWriter(&b)
	fmt.Fprintf(w, "[    0.000000] Linux version 6.1.0-sortie-localcloud (sortie@localcloud) #1 SMP\n")
	fmt.Fprintf(w, "[    0.000000] Command line: BOOT_IMAGE=/boot/vmlinuz root=/dev/xvda1 console=ttyS0\n")
	fmt.Fprintf(w, "Cloud-init v. 24.1 running 'init' at %s. Up 3.00 seconds.\n", launched.UTC().Format(time.RFC1123Z))
	fmt.Fprintf(w, "ci-info: ++++++++++++++++++++++++Net device info+++++++++++++++++++++++++\n")
	fmt.Fprintf(w, "ci-info: | eth0 | True | %s | 255.255.0.0 | global |\n", privateIP)
	fmt.Fprintf(w, "#############################################################\n")
	fmt.Fprintf(w, "-----BEGIN SSH HOST KEY FINGERPRINTS-----\n")
	fmt.Fprintf(w, "%d %s root@%s (%s)\n", keyBits(hostKey), ssh.FingerprintSHA256(hostKey), hostname, keyType)
	fmt.Fprintf(w, "-----END SSH HOST KEY FINGERPRINTS-----\n")
	fmt.Fprintf(w, "#############################################################\n")
	fmt.Fprintf(w, "-----BEGIN SSH HOST KEY KEYS-----\n")
	fmt.Fprintf(w, "%s root@%s\n", authorized, hostname)
	fmt.Fprintf(w, "-----END SSH HOST KEY KEYS-----\n")
	fmt.Fprintf(w, "Cloud-init v. 24.1 finished at %s. Datasource DataSourceEc2Local.  Up 6.00 seconds\n", launched.UTC().Format(time.RFC1123Z))
	_ = w.Flush()
	return b.String()
}

// keyBits is the size ssh-keygen -l prints for a key.
func keyBits(k ssh.PublicKey) int {
	ck, ok := k.(ssh.CryptoPublicKey)
	if !ok {
		return 0
	}
	switch pub := ck.CryptoPublicKey().(type) {
	case ed25519.PublicKey:
		return 256
	case *rsa.PublicKey:
		return pub.N.BitLen()
	case *ecdsa.PublicKey:
		return pub.Curve.Params().BitSize
	}
	return 0
}
