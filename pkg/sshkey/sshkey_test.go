package sshkey_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/sivchari/kumo"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/sshkey"
)

// ed25519PEM returns a fresh ed25519 key in OpenSSH PEM form and its public key.
func ed25519PEM(t *testing.T, passphrase string) ([]byte, ssh.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var block *pem.Block
	if passphrase == "" {
		block, err = ssh.MarshalPrivateKey(priv, "test")
	} else {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "test", []byte(passphrase))
	}
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(block), sshPub
}

func writeFile(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "id")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseSource(t *testing.T) {
	tests := []struct {
		source  string
		want    sshkey.Location
		wantErr string
	}{
		{source: "/etc/sortie/id_ed25519", want: sshkey.Location{Path: "/etc/sortie/id_ed25519"}},
		{source: "relative/key", want: sshkey.Location{Path: "relative/key"}},
		{source: "s3://bucket/keys/sortie-dev.pem", want: sshkey.Location{Bucket: "bucket", Key: "keys/sortie-dev.pem"}},
		{source: "", wantErr: "empty"},
		{source: "s3://bucket", wantErr: "both parts"},
		{source: "s3://bucket/", wantErr: "both parts"},
		{source: "s3:///key", wantErr: "both parts"},
		{source: "https://example.com/key", wantErr: "want a file path or s3://bucket/key"},
	}
	for _, tt := range tests {
		t.Run(tt.source, func(t *testing.T) {
			got, err := sshkey.ParseSource(tt.source)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSource(%q) error = %v, want one containing %q", tt.source, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSource(%q): %v", tt.source, err)
			}
			if got != tt.want {
				t.Fatalf("ParseSource(%q) = %+v, want %+v", tt.source, got, tt.want)
			}
			if got.String() != tt.source {
				t.Fatalf("String() = %q, want %q", got.String(), tt.source)
			}
		})
	}
}

func TestLoadFile(t *testing.T) {
	edPEM, edPub := ed25519PEM(t, "")
	encPEM, _ := ed25519PEM(t, "hunter2")

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})
	rsaPub, err := ssh.NewPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}

	// A damaged key: its base64 body must not leak into the error.
	damaged := bytes.Replace(edPEM, []byte("-----END OPENSSH PRIVATE KEY-----"), []byte("garbage"), 1)
	secretLine := strings.Split(string(edPEM), "\n")[1]

	tests := []struct {
		name    string
		data    []byte
		want    ssh.PublicKey
		wantIs  error
		wantErr string
	}{
		{name: "openssh ed25519", data: edPEM, want: edPub},
		{name: "pkcs1 rsa", data: rsaPEM, want: rsaPub},
		{name: "passphrase", data: encPEM, wantIs: sshkey.ErrEncrypted},
		{name: "damaged", data: damaged, wantErr: "parsing private key"},
		{name: "public key", data: ssh.MarshalAuthorizedKey(edPub), wantErr: "parsing private key"},
		{name: "empty", data: nil, wantErr: "empty"},
		{name: "too large", data: bytes.Repeat([]byte("A"), sshkey.MaxKeyBytes+1), wantErr: "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, tt.data)
			signer, err := sshkey.Load(context.Background(), nil, path)
			if tt.want != nil {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if !bytes.Equal(signer.PublicKey().Marshal(), tt.want.Marshal()) {
					t.Fatalf("loaded key %s, want %s", ssh.FingerprintSHA256(signer.PublicKey()), ssh.FingerprintSHA256(tt.want))
				}
				return
			}
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Fatalf("error = %v, want errors.Is %v", err, tt.wantIs)
			}
			if tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error = %v, want it to name the source %s", err, path)
			}
			if strings.Contains(err.Error(), secretLine) || strings.Contains(err.Error(), "AAAA") {
				t.Fatalf("error leaks key material: %v", err)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope")
	_, err := sshkey.Load(context.Background(), nil, path)
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), path) {
		t.Fatalf("error = %v, want a not-exist error naming %s", err, path)
	}
}

func TestLoadS3(t *testing.T) {
	srv := kumo.NewServer()
	t.Cleanup(srv.Close)
	cfg := awsx.ForEndpoint(srv.URL)
	client := s3.NewFromConfig(cfg, awsx.S3Options(cfg))
	ctx := context.Background()
	bucket := "sshkey-test-" + strings.ToLower(rand.Text()[:8])
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatal(err)
	}
	keyPEM, pub := ed25519PEM(t, "")
	_, err := client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String("keys/dev.pem"), Body: bytes.NewReader(keyPEM),
		ServerSideEncryption: s3types.ServerSideEncryptionAwsKms,
	})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("found", func(t *testing.T) {
		signer, err := sshkey.Load(ctx, client, "s3://"+bucket+"/keys/dev.pem")
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		if !bytes.Equal(signer.PublicKey().Marshal(), pub.Marshal()) {
			t.Fatal("loaded a different key")
		}
	})
	t.Run("missing object", func(t *testing.T) {
		src := "s3://" + bucket + "/keys/missing.pem"
		_, err := sshkey.Load(ctx, client, src)
		if err == nil || !strings.Contains(err.Error(), src) {
			t.Fatalf("error = %v, want one naming %s", err, src)
		}
		if !awsx.IsNotFound(err) {
			t.Fatalf("error = %v, want a not-found API error", err)
		}
	})
	t.Run("no client", func(t *testing.T) {
		_, err := sshkey.Load(ctx, nil, "s3://"+bucket+"/keys/dev.pem")
		if err == nil || !strings.Contains(err.Error(), "no S3 client") {
			t.Fatalf("error = %v, want a missing-client error", err)
		}
	})
}

// TestRead: the key as stored, for a tool that reads it from a file; something that is not
// an unencrypted private key is refused without its content in the error.
func TestRead(t *testing.T) {
	edPEM, _ := ed25519PEM(t, "")
	encPEM, _ := ed25519PEM(t, "hunter2")
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{"openssh ed25519", edPEM, ""},
		{"passphrase", encPEM, "passphrase-protected"},
		{"not a key", []byte("hello\n"), "parsing private key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sshkey.Read(context.Background(), nil, writeFile(t, tc.data))
			if tc.wantErr == "" {
				if err != nil || !bytes.Equal(got, tc.data) {
					t.Fatalf("got %d bytes, %v; want the file", len(got), err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "hello") {
				t.Errorf("got %v, want %q", err, tc.wantErr)
			}
		})
	}
	if _, err := sshkey.Read(context.Background(), nil, "s3://b/k"); err == nil {
		t.Error("an S3 source without a client was read")
	}
}
