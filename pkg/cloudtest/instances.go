package cloudtest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/hostkey"
	"github.com/sortie-fleet/sortie/pkg/sshhost"
	"github.com/sortie-fleet/sortie/pkg/sshkey"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// Image is the AMI id tests launch: well-formed, and the local cloud runs any image the same.
const Image = "ami-0123456789abcdef0"

// LaunchTimeout is how long Launch waits for instances to be running with an SSH endpoint.
const LaunchTimeout = 10 * time.Second

// NewSigner returns a fresh ed25519 SSH key.
func NewSigner(tb testing.TB) ssh.Signer {
	tb.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// KeyPair is an EC2 key pair created by a test, with its private key in a file, as a
// service's SSHKey setting names it.
type KeyPair struct {
	Name   string
	Path   string // the private key, mode 0600
	Signer ssh.Signer
}

// NewKeyPair creates an ed25519 key pair named name and writes its private key to a file
// of the test, loaded back the way the services load it.
func NewKeyPair(tb testing.TB, client *ec2.Client, name string) KeyPair {
	tb.Helper()
	kp, err := client.CreateKeyPair(tb.Context(), &ec2.CreateKeyPairInput{KeyName: aws.String(name), KeyType: ec2types.KeyTypeEd25519})
	if err != nil {
		tb.Fatalf("CreateKeyPair %s: %v", name, err)
	}
	k := KeyPair{Name: name, Path: filepath.Join(tb.TempDir(), "login.pem")}
	if err := os.WriteFile(k.Path, []byte(aws.ToString(kp.KeyMaterial)), 0o600); err != nil {
		tb.Fatal(err)
	}
	if k.Signer, err = sshkey.Load(tb.Context(), nil, k.Path); err != nil {
		tb.Fatal(err)
	}
	return k
}

// HostKey is a fleet's SSH host key as the provisioner hands it to instances.
type HostKey struct {
	Authorized string        // authorized_keys line, as FleetLaunched.HostKey carries it
	Public     ssh.PublicKey // the same key, parsed
	UserData   string        // cloud-init user data that installs it
}

// NewHostKey returns a fresh ed25519 host key.
func NewHostKey(tb testing.TB) HostKey {
	tb.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	var k HostKey
	if k.UserData, err = hostkey.CloudConfig(priv); err != nil {
		tb.Fatal(err)
	}
	if k.Authorized, err = hostkey.AuthorizedKey(priv); err != nil {
		tb.Fatal(err)
	}
	if k.Public, _, _, _, err = ssh.ParseAuthorizedKey([]byte(k.Authorized)); err != nil {
		tb.Fatal(err)
	}
	return k
}

// LaunchSpec describes the instances Launch runs.
type LaunchSpec struct {
	InstanceType ec2types.InstanceType // "" means t3.micro
	KeyName      string
	UserData     string // as is; Launch encodes it
	Tags         map[string]string
	// Spot launches one-time spot instances that terminate on interruption (no max price).
	Spot bool
}

// Launch runs n instances of Image and waits up to LaunchTimeout until every one is
// running with an SSH endpoint; it returns them in launch order.
func Launch(tb testing.TB, client *ec2.Client, n int, spec LaunchSpec) []events.Instance {
	tb.Helper()
	if spec.InstanceType == "" {
		spec.InstanceType = ec2types.InstanceTypeT3Micro
	}
	in := &ec2.RunInstancesInput{
		ImageId: aws.String(Image), InstanceType: spec.InstanceType,
		MinCount: aws.Int32(int32(n)), MaxCount: aws.Int32(int32(n)), KeyName: aws.String(spec.KeyName),
		UserData: aws.String(base64.StdEncoding.EncodeToString([]byte(spec.UserData))),
	}
	if spec.Spot {
		in.InstanceMarketOptions = &ec2types.InstanceMarketOptionsRequest{
			MarketType: ec2types.MarketTypeSpot,
			SpotOptions: &ec2types.SpotMarketOptions{
				SpotInstanceType:             ec2types.SpotInstanceTypeOneTime,
				InstanceInterruptionBehavior: ec2types.InstanceInterruptionBehaviorTerminate,
			},
		}
	}
	if len(spec.Tags) > 0 {
		var tags []ec2types.Tag
		for k, v := range spec.Tags {
			tags = append(tags, ec2types.Tag{Key: aws.String(k), Value: aws.String(v)})
		}
		in.TagSpecifications = []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: tags}}
	}
	run, err := client.RunInstances(tb.Context(), in)
	if err != nil {
		tb.Fatalf("RunInstances: %v", err)
	}
	var ids []string
	for _, in := range run.Instances {
		ids = append(ids, aws.ToString(in.InstanceId))
	}
	var out []events.Instance
	Eventually(tb, LaunchTimeout, func() error {
		ready := map[string]events.Instance{}
		for _, in := range DescribeInstances(tb, client, &ec2.DescribeInstancesInput{InstanceIds: ids}) {
			ep := Tags(in)[tags.SSHEndpoint]
			if in.State == nil || in.State.Name != ec2types.InstanceStateNameRunning || ep == "" {
				continue
			}
			ready[aws.ToString(in.InstanceId)] = events.Instance{
				ID: aws.ToString(in.InstanceId), InstanceType: string(in.InstanceType),
				PrivateIP: aws.ToString(in.PrivateIpAddress), SSHEndpoint: ep, LaunchedAt: aws.ToTime(in.LaunchTime),
			}
		}
		if len(ready) < len(ids) {
			return fmt.Errorf("%d of instances %v running with an SSH endpoint, want all", len(ready), ids)
		}
		out = out[:0]
		for _, id := range ids {
			out = append(out, ready[id])
		}
		return nil
	})
	return out
}

// DescribeInstances returns every instance DescribeInstances lists for in.
func DescribeInstances(tb testing.TB, client *ec2.Client, in *ec2.DescribeInstancesInput) []ec2types.Instance {
	tb.Helper()
	out, err := client.DescribeInstances(tb.Context(), in)
	if err != nil {
		tb.Fatalf("DescribeInstances: %v", err)
	}
	var all []ec2types.Instance
	for _, r := range out.Reservations {
		all = append(all, r.Instances...)
	}
	return all
}

// Tags returns an instance's tags by key.
func Tags(in ec2types.Instance) map[string]string { return tags.Map(in.Tags) }

// SSHHost is an in-process SSH host (commands run with /bin/sh in Dir) that accepts one
// login key.
type SSHHost struct {
	Addr    string
	Dir     string
	HostKey ssh.PublicKey
	Login   ssh.Signer
}

// StartSSHHost starts an SSH host on addr ("" picks a free loopback port) with fresh host
// and login keys; it closes at cleanup.
func StartSSHHost(tb testing.TB, addr string) *SSHHost {
	tb.Helper()
	hostKey, login := NewSigner(tb), NewSigner(tb)
	dir := tb.TempDir()
	h, err := sshhost.Start(sshhost.Config{HostKey: hostKey, AuthorizedKeys: []ssh.PublicKey{login.PublicKey()}, Dir: dir, Addr: addr})
	if err != nil {
		tb.Fatalf("starting ssh host: %v", err)
	}
	tb.Cleanup(func() { _ = h.Close() })
	return &SSHHost{Addr: h.Addr(), Dir: dir, HostKey: hostKey.PublicKey(), Login: login}
}
