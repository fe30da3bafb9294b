// Package sshkey loads the SSH private key the services log in to instances with, from a file or from S3.
package sshkey

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/crypto/ssh"
)

// MaxKeyBytes bounds what Load reads: an OpenSSH or PEM private key is a few KiB at most.
const MaxKeyBytes = 64 << 10

// GetObjectAPI is the S3 call Load makes for an s3:// source.
type GetObjectAPI interface {
	GetObject(ctx context.Context, params *s3.GetObjectInput, optFns ...func(*s3.Options)) (*s3.GetObjectOutput, error)
}

var _ GetObjectAPI = (*s3.Client)(nil)

// ErrEncrypted is wrapped by the error for a passphrase-protected key: services cannot
// prompt for a passphrase, so the key must be stored unencrypted (in S3 with SSE-KMS).
var ErrEncrypted = errors.New("ssh private key is passphrase-protected")

// Location is where a key is read from: a local file (Path) or an S3 object (Bucket, Key).
type Location struct {
	Path        string
	Bucket, Key string
}

// String renders the location as it is written in SORTIE_SSH_KEY.
func (l Location) String() string {
	if l.Path != "" {
		return l.Path
	}
	return "s3://" + l.Bucket + "/" + l.Key
}

// ParseSource parses a key source: "s3://bucket/key" or a file path.
func ParseSource(source string) (Location, error) {
	if source == "" {
		return Location{}, errors.New("ssh key source is empty: want a file path or s3://bucket/key")
	}
	rest, ok := strings.CutPrefix(source, "s3://")
	if !ok {
		if strings.Contains(source, "://") {
			return Location{}, fmt.Errorf("ssh key source %q: want a file path or s3://bucket/key", source)
		}
		return Location{Path: source}, nil
	}
	bucket, key, _ := strings.Cut(rest, "/")
	if bucket == "" || key == "" {
		return Location{}, fmt.Errorf("ssh key source %q: want s3://bucket/key with both parts set", source)
	}
	return Location{Bucket: bucket, Key: key}, nil
}

// Load reads the private key at source (a file path or s3://bucket/key; api may be nil
// for a file) and returns its signer. Errors name the source, never the key material.
func Load(ctx context.Context, api GetObjectAPI, source string) (ssh.Signer, error) {
	loc, err := ParseSource(source)
	if err != nil {
		return nil, err
	}
	var data []byte
	if loc.Path != "" {
		data, err = readFile(loc.Path)
	} else {
		data, err = readObject(ctx, api, loc)
	}
	if err != nil {
		return nil, fmt.Errorf("loading ssh key %s: %w", loc, err)
	}
	signer, err := Parse(data)
	clear(data)
	if err != nil {
		return nil, fmt.Errorf("loading ssh key %s: %w", loc, err)
	}
	return signer, nil
}

// Read returns the private key at source (a file path or s3://bucket/key; api may be nil
// for a file) as stored, after checking that it parses: for a tool that needs the key in
// a file of its own (OpenSSH's ssh -i). The caller clears it when done.
func Read(ctx context.Context, api GetObjectAPI, source string) ([]byte, error) {
	loc, err := ParseSource(source)
	if err != nil {
		return nil, err
	}
	var data []byte
	if loc.Path != "" {
		data, err = readFile(loc.Path)
	} else {
		data, err = readObject(ctx, api, loc)
	}
	if err != nil {
		return nil, fmt.Errorf("loading ssh key %s: %w", loc, err)
	}
	if _, err := Parse(data); err != nil {
		clear(data)
		return nil, fmt.Errorf("loading ssh key %s: %w", loc, err)
	}
	return data, nil
}

// Parse parses a private key in OpenSSH, PKCS#1, PKCS#8 or SEC1 PEM form.
func Parse(data []byte) (ssh.Signer, error) {
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		var missing *ssh.PassphraseMissingError
		if errors.As(err, &missing) {
			return nil, ErrEncrypted
		}
		// x/crypto/ssh's parse errors describe the format, not the content.
		return nil, fmt.Errorf("parsing private key: %w", err)
	}
	return signer, nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readCapped(f)
}

func readObject(ctx context.Context, api GetObjectAPI, loc Location) ([]byte, error) {
	if api == nil {
		return nil, errors.New("no S3 client to read it with")
	}
	out, err := api.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(loc.Bucket), Key: aws.String(loc.Key)})
	if err != nil {
		return nil, err
	}
	defer out.Body.Close()
	return readCapped(out.Body)
}

func readCapped(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxKeyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading: %w", err)
	}
	if len(data) > MaxKeyBytes {
		clear(data)
		return nil, fmt.Errorf("larger than %d bytes: not a private key", MaxKeyBytes)
	}
	if len(data) == 0 {
		return nil, errors.New("empty")
	}
	return data, nil
}
