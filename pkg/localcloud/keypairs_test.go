package localcloud

import (
	"crypto/ed25519"
	"crypto/md5"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/pem"
	"regexp"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/awsx"
)

func TestCreateKeyPair(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)

	t.Run("rsa by default", func(t *testing.T) {
		out, err := client.CreateKeyPair(ctx, &ec2.CreateKeyPairInput{KeyName: aws.String("ops-rsa")})
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode([]byte(aws.ToString(out.KeyMaterial)))
		if block == nil || block.Type != "RSA PRIVATE KEY" {
			t.Fatalf("key material is not an RSA PEM: %.40q", aws.ToString(out.KeyMaterial))
		}
		priv, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if priv.N.BitLen() != 2048 {
			t.Errorf("key size = %d, want 2048", priv.N.BitLen())
		}
		pkcs8, _ := x509.MarshalPKCS8PrivateKey(priv)
		sum := sha1.Sum(pkcs8)
		if got, want := aws.ToString(out.KeyFingerprint), colonHex(sum[:]); got != want {
			t.Errorf("fingerprint = %s, want SHA-1 of the PKCS#8 key %s", got, want)
		}
		if _, err := ssh.ParsePrivateKey([]byte(aws.ToString(out.KeyMaterial))); err != nil {
			t.Errorf("x/crypto/ssh cannot use the key: %v", err)
		}
		if !regexp.MustCompile(`^key-[0-9a-f]{17}$`).MatchString(aws.ToString(out.KeyPairId)) {
			t.Errorf("key pair id = %q", aws.ToString(out.KeyPairId))
		}
	})

	t.Run("ed25519", func(t *testing.T) {
		out, err := client.CreateKeyPair(ctx, &ec2.CreateKeyPairInput{KeyName: aws.String("ops-ed"), KeyType: types.KeyTypeEd25519})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(aws.ToString(out.KeyMaterial), "-----BEGIN OPENSSH PRIVATE KEY-----") {
			t.Fatalf("key material is not OpenSSH: %.40q", aws.ToString(out.KeyMaterial))
		}
		signer, err := ssh.ParsePrivateKey([]byte(aws.ToString(out.KeyMaterial)))
		if err != nil {
			t.Fatal(err)
		}
		desc, err := client.DescribeKeyPairs(ctx, &ec2.DescribeKeyPairsInput{KeyNames: []string{"ops-ed"}, IncludePublicKey: aws.Bool(true)})
		if err != nil {
			t.Fatal(err)
		}
		if len(desc.KeyPairs) != 1 {
			t.Fatalf("described %d key pairs", len(desc.KeyPairs))
		}
		kp := desc.KeyPairs[0]
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(aws.ToString(kp.PublicKey)))
		if err != nil {
			t.Fatalf("public key %q: %v", aws.ToString(kp.PublicKey), err)
		}
		if string(pub.Marshal()) != string(signer.PublicKey().Marshal()) {
			t.Error("stored public key does not match the private key handed out")
		}
		if kp.KeyType != types.KeyTypeEd25519 || aws.ToString(kp.KeyFingerprint) != aws.ToString(out.KeyFingerprint) {
			t.Errorf("described %s %s, created %s", kp.KeyType, aws.ToString(kp.KeyFingerprint), aws.ToString(out.KeyFingerprint))
		}
		if aws.ToString(out.KeyFingerprint) != sha256Fingerprint(signer.PublicKey()) {
			t.Errorf("fingerprint %s is not the base64 SHA-256 of the key", aws.ToString(out.KeyFingerprint))
		}
	})

	t.Run("duplicate", func(t *testing.T) {
		_, err := client.CreateKeyPair(ctx, &ec2.CreateKeyPairInput{KeyName: aws.String("ops-ed"), KeyType: types.KeyTypeEd25519})
		wantCode(t, err, "InvalidKeyPair.Duplicate")
	})
	t.Run("bad type", func(t *testing.T) {
		_, err := client.CreateKeyPair(ctx, &ec2.CreateKeyPairInput{KeyName: aws.String("x"), KeyType: "dsa"})
		wantCode(t, err, "InvalidParameterValue")
	})
}

func TestImportDescribeDeleteKeyPair(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)

	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	edSSH, _ := ssh.NewPublicKey(edPub)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaSSH, _ := ssh.NewPublicKey(&rsaKey.PublicKey)
	rsaDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	rsaMD5 := md5.Sum(rsaDER)

	imports := []struct {
		name, keyType, fingerprint string
		material                   []byte
	}{
		{"imported-ed", "ed25519", sha256Fingerprint(edSSH), append(ssh.MarshalAuthorizedKey(edSSH), " me@laptop"...)},
		{"imported-rsa", "rsa", colonHex(rsaMD5[:]), ssh.MarshalAuthorizedKey(rsaSSH)},
	}
	for _, im := range imports {
		t.Run("import "+im.keyType, func(t *testing.T) {
			out, err := client.ImportKeyPair(ctx, &ec2.ImportKeyPairInput{
				KeyName:           aws.String(im.name),
				PublicKeyMaterial: im.material,
				TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeKeyPair, Tags: []types.Tag{{Key: aws.String("team"), Value: aws.String("ops")}}}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := aws.ToString(out.KeyFingerprint); got != im.fingerprint {
				t.Errorf("fingerprint = %s, want %s", got, im.fingerprint)
			}
		})
	}

	t.Run("invalid material", func(t *testing.T) {
		_, err := client.ImportKeyPair(ctx, &ec2.ImportKeyPairInput{KeyName: aws.String("bad"), PublicKeyMaterial: []byte("not a key")})
		wantCode(t, err, "InvalidKey.Format")
	})
	t.Run("duplicate", func(t *testing.T) {
		_, err := client.ImportKeyPair(ctx, &ec2.ImportKeyPairInput{KeyName: aws.String("imported-ed"), PublicKeyMaterial: imports[0].material})
		wantCode(t, err, "InvalidKeyPair.Duplicate")
	})

	names := func(in *ec2.DescribeKeyPairsInput) []string {
		t.Helper()
		out, err := client.DescribeKeyPairs(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, kp := range out.KeyPairs {
			got = append(got, aws.ToString(kp.KeyName))
		}
		return got
	}
	tests := []struct {
		name string
		in   *ec2.DescribeKeyPairsInput
		want string
	}{
		{"all", &ec2.DescribeKeyPairsInput{}, "imported-ed,imported-rsa"},
		{"by name", &ec2.DescribeKeyPairsInput{KeyNames: []string{"imported-rsa"}}, "imported-rsa"},
		{"by type", &ec2.DescribeKeyPairsInput{Filters: []types.Filter{{Name: aws.String("key-type"), Values: []string{"ed25519"}}}}, "imported-ed"},
		{"by tag", &ec2.DescribeKeyPairsInput{Filters: []types.Filter{{Name: aws.String("tag:team"), Values: []string{"ops"}}}}, "imported-ed,imported-rsa"},
	}
	for _, tt := range tests {
		t.Run("describe "+tt.name, func(t *testing.T) {
			if got := strings.Join(names(tt.in), ","); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
	t.Run("describe unknown", func(t *testing.T) {
		_, err := client.DescribeKeyPairs(ctx, &ec2.DescribeKeyPairsInput{KeyNames: []string{"nope"}})
		wantCode(t, err, "InvalidKeyPair.NotFound")
		if !awsx.IsNotFound(err) {
			t.Errorf("awsx.IsNotFound(%v) = false", err)
		}
	})
	t.Run("delete", func(t *testing.T) {
		for range 2 { // deleting a missing key pair succeeds
			if _, err := client.DeleteKeyPair(ctx, &ec2.DeleteKeyPairInput{KeyName: aws.String("imported-rsa")}); err != nil {
				t.Fatal(err)
			}
		}
		if got := strings.Join(names(&ec2.DescribeKeyPairsInput{}), ","); got != "imported-ed" {
			t.Errorf("after delete: %s", got)
		}
	})
}
