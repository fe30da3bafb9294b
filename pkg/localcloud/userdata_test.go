package localcloud

import (
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestHostKeyFromUserData(t *testing.T) {
	t.Parallel()
	edSigner, edPEM := newEd25519(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}))
	rsaPub, _ := ssh.NewPublicKey(&rsaKey.PublicKey)

	indent := func(s string) string {
		return "    " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n    ") + "\n"
	}
	bothKeys := "#cloud-config\nssh_keys:\n  rsa_private: |\n" + indent(rsaPEM) + "  ed25519_private: |\n" + indent(edPEM)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte(cloudConfigWithHostKey(edPEM)))
	_ = zw.Close()
	multipart := "Content-Type: multipart/mixed; boundary=\"BOUNDARY\"\nMIME-Version: 1.0\n\n" +
		"--BOUNDARY\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho hi\n" +
		"--BOUNDARY\nContent-Type: text/cloud-config\n\n" + cloudConfigWithHostKey(edPEM) +
		"--BOUNDARY--\n"

	tests := []struct {
		name     string
		userData []byte
		want     ssh.PublicKey // nil: no key handed over
		wantErr  bool
	}{
		{"none", nil, nil, false},
		{"shell script", []byte("#!/bin/sh\necho hi\n"), nil, false},
		{"cloud-config without keys", []byte("#cloud-config\npackages: [jq]\n"), nil, false},
		{"ed25519", []byte(cloudConfigWithHostKey(edPEM)), edSigner.PublicKey(), false},
		{"rsa only", []byte("#cloud-config\nssh_keys:\n  rsa_private: |\n" + indent(rsaPEM)), rsaPub, false},
		{"ed25519 preferred over rsa", []byte(bothKeys), edSigner.PublicKey(), false},
		{"gzipped", gz.Bytes(), edSigner.PublicKey(), false},
		{"mime multi-part", []byte(multipart), edSigner.PublicKey(), false},
		{"public keys only", []byte("#cloud-config\nssh_keys:\n  ed25519_public: ssh-ed25519 AAAA\n"), nil, false},
		{"bad key", []byte("#cloud-config\nssh_keys:\n  ed25519_private: nope\n"), nil, true},
		{"bad yaml", []byte("#cloud-config\nssh_keys: [\n"), nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			signer, err := hostKeyFromUserData(tt.userData)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			switch {
			case tt.want == nil && signer != nil:
				t.Errorf("got a %s key, want none", signer.PublicKey().Type())
			case tt.want != nil && (signer == nil || !bytes.Equal(signer.PublicKey().Marshal(), tt.want.Marshal())):
				t.Errorf("got %v, want the %s key from user data", signer, tt.want.Type())
			}
		})
	}
}

func TestConsoleOutputGolden(t *testing.T) {
	t.Parallel()
	seed := bytes.Repeat([]byte{7}, ed25519.SeedSize)
	pub, err := ssh.NewPublicKey(ed25519.NewKeyFromSeed(seed).Public())
	if err != nil {
		t.Fatal(err)
	}
	got := consoleOutput("10.0.1.44", time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC), pub)

	golden := filepath.Join("testdata", "console_output.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("console output differs from %s:\n%s", golden, got)
	}
}
