package localcloud

import (
	"crypto/ed25519"
	"crypto/md5"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/localcloud/queryform"
)

// keyPair is an EC2 key pair; only the public half is kept, as on AWS.
type keyPair struct {
	id          string
	name        string
	keyType     string // rsa or ed25519
	fingerprint string
	public      ssh.PublicKey
	created     time.Time
	tags        map[string]string
}

func (c *Cloud) keyPairByIDLocked(id string) *keyPair {
	for _, kp := range c.keyPairs {
		if kp.id == id {
			return kp
		}
	}
	return nil
}

func validateKeyName(name string) *apiError {
	switch {
	case name == "":
		return missingParameter("KeyName")
	case len(name) > 255 || !isASCII(name):
		return invalidParameter("Value (%s) for parameter keyName is invalid. Expected at most 255 ASCII characters.", name)
	}
	return nil
}

func (c *Cloud) createKeyPair(requestID string, form url.Values) (any, *apiError) {
	name := form.Get("KeyName")
	if err := validateKeyName(name); err != nil {
		return nil, err
	}
	keyType := form.Get("KeyType")
	if keyType == "" {
		keyType = "rsa" // AWS's default
	}
	if keyType != "rsa" && keyType != "ed25519" {
		return nil, invalidParameter("Value (%s) for parameter keyType is invalid. Expected rsa or ed25519.", keyType)
	}
	if format := form.Get("KeyFormat"); format != "" && format != "pem" {
		return nil, invalidParameter("Value (%s) for parameter keyFormat is not supported by the local cloud; use pem.", format)
	}
	keyTags, err := tagSpecifications(form, "key-pair")
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	_, dup := c.keyPairs[name]
	c.mu.Unlock()
	if dup { // checked again below; this spares generating an RSA key for nothing
		return nil, duplicateKeyPair(name)
	}

	material, public, fingerprint, genErr := generateKeyPair(keyType, name)
	if genErr != nil {
		return nil, &apiError{Status: 500, Code: "InternalError", Message: genErr.Error()}
	}
	kp := &keyPair{id: newID("key-"), name: name, keyType: keyType, fingerprint: fingerprint, public: public, created: time.Now(), tags: keyTags}

	c.mu.Lock()
	defer c.mu.Unlock()
	if _, dup := c.keyPairs[name]; dup {
		return nil, duplicateKeyPair(name)
	}
	c.keyPairs[name] = kp
	return createKeyPairResponse{
		responseMeta:   meta(requestID),
		KeyName:        name,
		KeyFingerprint: fingerprint,
		KeyMaterial:    material,
		KeyPairID:      kp.id,
		Tags:           renderTags(kp.tags),
	}, nil
}

func duplicateKeyPair(name string) *apiError {
	return clientError("InvalidKeyPair.Duplicate", "The keypair '%s' already exists.", name)
}

// generateKeyPair makes a key pair the way EC2 hands it out: RSA keys as a PKCS#1 PEM with
// the SHA-1 fingerprint of the PKCS#8 private key, ed25519 keys in OpenSSH format with the
// base64 SHA-256 fingerprint.
func generateKeyPair(keyType, name string) (material string, public ssh.PublicKey, fingerprint string, err error) {
	switch keyType {
	case "rsa":
		priv, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return "", nil, "", fmt.Errorf("generating rsa key: %w", err)
		}
		pkcs8, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return "", nil, "", fmt.Errorf("encoding rsa key: %w", err)
		}
		sum := sha1.Sum(pkcs8)
		pub, err := ssh.NewPublicKey(&priv.PublicKey)
		if err != nil {
			return "", nil, "", fmt.Errorf("encoding rsa key: %w", err)
		}
		block := &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(priv)}
		return string(pem.EncodeToMemory(block)), pub, colonHex(sum[:]), nil
	default:
		pubKey, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return "", nil, "", fmt.Errorf("generating ed25519 key: %w", err)
		}
		block, err := ssh.MarshalPrivateKey(priv, name)
		if err != nil {
			return "", nil, "", fmt.Errorf("encoding ed25519 key: %w", err)
		}
		pub, err := ssh.NewPublicKey(pubKey)
		if err != nil {
			return "", nil, "", fmt.Errorf("encoding ed25519 key: %w", err)
		}
		return string(pem.EncodeToMemory(block)), pub, sha256Fingerprint(pub), nil
	}
}

func colonHex(b []byte) string {
	h := hex.EncodeToString(b)
	parts := make([]string, 0, len(b))
	for i := 0; i < len(h); i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts, ":")
}

func sha256Fingerprint(pub ssh.PublicKey) string {
	sum := sha256.Sum256(pub.Marshal())
	return base64.StdEncoding.EncodeToString(sum[:])
}

// importedFingerprint is what EC2 shows for an imported key: the MD5 of the DER public key
// for RSA, the base64 SHA-256 for ed25519.
func importedFingerprint(pub ssh.PublicKey) (string, error) {
	if pub.Type() != ssh.KeyAlgoRSA {
		return sha256Fingerprint(pub), nil
	}
	ck, ok := pub.(ssh.CryptoPublicKey)
	if !ok {
		return "", fmt.Errorf("unexpected rsa key type %T", pub)
	}
	der, err := x509.MarshalPKIXPublicKey(ck.CryptoPublicKey())
	if err != nil {
		return "", fmt.Errorf("encoding rsa key: %w", err)
	}
	sum := md5.Sum(der)
	return colonHex(sum[:]), nil
}

func (c *Cloud) importKeyPair(requestID string, form url.Values) (any, *apiError) {
	name := form.Get("KeyName")
	if err := validateKeyName(name); err != nil {
		return nil, err
	}
	encoded := form.Get("PublicKeyMaterial")
	if encoded == "" {
		return nil, missingParameter("PublicKeyMaterial")
	}
	material, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return nil, clientError("InvalidKey.Format", "Key is not in valid OpenSSH public key format")
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(material)
	if err != nil {
		return nil, clientError("InvalidKey.Format", "Key is not in valid OpenSSH public key format")
	}
	var keyType string
	switch pub.Type() {
	case ssh.KeyAlgoRSA:
		keyType = "rsa"
	case ssh.KeyAlgoED25519:
		keyType = "ed25519"
	default:
		return nil, clientError("InvalidKey.Format", "Key type %s is not supported; use rsa or ed25519", pub.Type())
	}
	fingerprint, fpErr := importedFingerprint(pub)
	if fpErr != nil {
		return nil, clientError("InvalidKey.Format", "%v", fpErr)
	}
	keyTags, apiErr := tagSpecifications(form, "key-pair")
	if apiErr != nil {
		return nil, apiErr
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if _, dup := c.keyPairs[name]; dup {
		return nil, duplicateKeyPair(name)
	}
	kp := &keyPair{id: newID("key-"), name: name, keyType: keyType, fingerprint: fingerprint, public: pub, created: time.Now(), tags: keyTags}
	c.keyPairs[name] = kp
	return importKeyPairResponse{
		responseMeta:   meta(requestID),
		KeyName:        name,
		KeyFingerprint: fingerprint,
		KeyPairID:      kp.id,
		Tags:           renderTags(kp.tags),
	}, nil
}

func (c *Cloud) describeKeyPairs(requestID string, form url.Values) (any, *apiError) {
	names, ids := queryform.List(form, "KeyName"), queryform.List(form, "KeyPairId")
	match, err := keyPairFilter(filters(form))
	if err != nil {
		return nil, err
	}
	includePublic := form.Get("IncludePublicKey") == "true"

	c.mu.Lock()
	defer c.mu.Unlock()
	var selected []*keyPair
	switch {
	case len(names) > 0 || len(ids) > 0:
		for _, n := range names {
			kp, ok := c.keyPairs[n]
			if !ok {
				return nil, clientError("InvalidKeyPair.NotFound", "The key pair '%s' does not exist", n)
			}
			selected = append(selected, kp)
		}
		for _, id := range ids {
			kp := c.keyPairByIDLocked(id)
			if kp == nil {
				return nil, clientError("InvalidKeyPair.NotFound", "The key pair '%s' does not exist", id)
			}
			selected = append(selected, kp)
		}
	default:
		for _, kp := range c.keyPairs {
			selected = append(selected, kp)
		}
	}
	sort.Slice(selected, func(i, j int) bool { return selected[i].name < selected[j].name })

	resp := describeKeyPairsResponse{responseMeta: meta(requestID)}
	seen := map[string]bool{}
	for _, kp := range selected {
		if seen[kp.id] || !match(kp) {
			continue
		}
		seen[kp.id] = true
		x := xmlKeyPair{
			KeyPairID:      kp.id,
			KeyName:        kp.name,
			KeyFingerprint: kp.fingerprint,
			KeyType:        kp.keyType,
			CreateTime:     formatTime(kp.created),
			Tags:           renderTags(kp.tags),
		}
		if includePublic {
			x.PublicKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(kp.public))) + " " + kp.name
		}
		resp.Keys = append(resp.Keys, x)
	}
	return resp, nil
}

func (c *Cloud) deleteKeyPair(requestID string, form url.Values) (any, *apiError) {
	name, id := form.Get("KeyName"), form.Get("KeyPairId")
	if name == "" && id == "" {
		return nil, missingParameter("KeyName")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	kp := c.keyPairs[name]
	if id != "" {
		kp = c.keyPairByIDLocked(id)
	}
	resp := deleteKeyPairResponse{responseMeta: meta(requestID), Return: true}
	if kp != nil { // deleting a missing key pair succeeds, as on AWS
		delete(c.keyPairs, kp.name)
		resp.KeyPairID = kp.id
	}
	return resp, nil
}
