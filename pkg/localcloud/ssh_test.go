package localcloud

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/tags"
)

// sshRun runs one command in a new session and returns its stdout.
func sshRun(t testing.TB, client *ssh.Client, cmd string, stdin string) string {
	t.Helper()
	s, err := client.NewSession()
	if err != nil {
		t.Fatalf("new session: %v", err)
	}
	defer s.Close()
	var stdout, stderr bytes.Buffer
	s.Stdout, s.Stderr = &stdout, &stderr
	if stdin != "" {
		s.Stdin = strings.NewReader(stdin)
	}
	if err := s.Run(cmd); err != nil {
		t.Fatalf("running %q: %v (stderr %q)", cmd, err, stderr.String())
	}
	return stdout.String()
}

func endpointOf(t testing.TB, client *ec2.Client, id string) string {
	t.Helper()
	insts := describe(t, client, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	endpoint, ok := tagValue(insts[0], tags.SSHEndpoint)
	if !ok {
		t.Fatalf("instance %s has no %s tag", id, tags.SSHEndpoint)
	}
	return endpoint
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

func TestInstanceIsAnSSHHost(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)

	userKey, _ := newEd25519(t)
	if _, err := client.ImportKeyPair(ctx, &ec2.ImportKeyPairInput{
		KeyName: aws.String("fleet-key"), PublicKeyMaterial: ssh.MarshalAuthorizedKey(userKey.PublicKey()),
	}); err != nil {
		t.Fatal(err)
	}
	hostKey, hostKeyPEM := newEd25519(t)
	in := runInput(launch{keyName: "fleet-key", userData: cloudConfigWithHostKey(hostKeyPEM)})
	in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Name: aws.String("sortie-worker")}
	out, err := client.RunInstances(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(out.Instances[0].InstanceId)
	waitRunning(t, client, []string{id})
	endpoint := endpointOf(t, client, id)

	dial := func(hostKeyCallback ssh.HostKeyCallback, auth ssh.Signer) (*ssh.Client, error) {
		return ssh.Dial("tcp", endpoint, &ssh.ClientConfig{
			User:            "admin",
			Auth:            []ssh.AuthMethod{ssh.PublicKeys(auth)},
			HostKeyCallback: hostKeyCallback,
			Timeout:         5 * time.Second,
		})
	}
	conn, err := dial(ssh.FixedHostKey(hostKey.PublicKey()), userKey)
	if err != nil {
		t.Fatalf("ssh to %s with the pinned host key: %v", endpoint, err)
	}
	defer conn.Close()

	t.Run("host key is pinned", func(t *testing.T) {
		other, _ := newEd25519(t)
		if c, err := dial(ssh.FixedHostKey(other.PublicKey()), userKey); err == nil {
			c.Close()
			t.Fatal("handshake succeeded against the wrong host key")
		}
	})
	t.Run("only the key pair logs in", func(t *testing.T) {
		stranger, _ := newEd25519(t)
		if c, err := dial(ssh.FixedHostKey(hostKey.PublicKey()), stranger); err == nil {
			c.Close()
			t.Fatal("a key outside the key pair logged in")
		}
	})

	dir, err := filepath.EvalSymlinks(c.InstanceDir(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("command", func(t *testing.T) {
		got := sshRun(t, conn, "echo hello; pwd", "")
		if got != "hello\n"+dir+"\n" {
			t.Errorf("output = %q, want hello and the instance dir %s", got, dir)
		}
	})
	t.Run("upload through stdin", func(t *testing.T) {
		sshRun(t, conn, "cat > recipe.sh", "echo from recipe\n")
		b, err := os.ReadFile(filepath.Join(dir, "recipe.sh"))
		if err != nil || string(b) != "echo from recipe\n" {
			t.Errorf("uploaded file = %q, %v", b, err)
		}
		if got := sshRun(t, conn, "sh recipe.sh", ""); got != "from recipe\n" {
			t.Errorf("running the upload: %q", got)
		}
	})

	env := map[string]string{}
	for _, line := range strings.Split(sshRun(t, conn, "env", ""), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	t.Run("environment", func(t *testing.T) {
		want := map[string]string{"AWS_ENDPOINT_URL": c.URL(), "AWS_REGION": "us-east-1", "SORTIE_INSTANCE_ID": id}
		for k, v := range want {
			if env[k] != v {
				t.Errorf("%s = %q, want %q", k, env[k], v)
			}
		}
		for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} {
			if env[k] == "" {
				t.Errorf("%s is not set", k)
			}
		}
		if !strings.HasPrefix(env["AWS_ACCESS_KEY_ID"], "ASIA") {
			t.Errorf("AWS_ACCESS_KEY_ID = %q, want temporary (ASIA…) credentials from STS", env["AWS_ACCESS_KEY_ID"])
		}
	})
	t.Run("an SDK configured from the instance env reaches the cloud", func(t *testing.T) {
		cfg := aws.Config{
			Region:       env["AWS_REGION"],
			BaseEndpoint: aws.String(env["AWS_ENDPOINT_URL"]),
			Credentials:  credentials.NewStaticCredentialsProvider(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["AWS_SESSION_TOKEN"]),
		}
		s3c := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
		bucket := "lc-creds-" + strings.TrimPrefix(id, "i-")
		if _, err := s3c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
			t.Fatalf("creating a bucket with the instance's credentials: %v", err)
		}
	})

	var pid int
	t.Run("detached process outlives the session", func(t *testing.T) {
		got := strings.TrimSpace(sshRun(t, conn, "nohup sleep 60 > out 2>&1 < /dev/null & echo $!", ""))
		if pid, err = strconv.Atoi(got); err != nil {
			t.Fatalf("pid = %q", got)
		}
		if got := sshRun(t, conn, fmt.Sprintf("kill -0 %d && echo alive", pid), ""); got != "alive\n" {
			t.Errorf("from a new session: %q", got)
		}
		conn2, err := dial(ssh.FixedHostKey(hostKey.PublicKey()), userKey)
		if err != nil {
			t.Fatal(err)
		}
		defer conn2.Close()
		if got := sshRun(t, conn2, fmt.Sprintf("kill -0 %d && echo alive", pid), ""); got != "alive\n" {
			t.Errorf("from a new connection: %q", got)
		}
	})

	t.Run("console output carries the host key", func(t *testing.T) {
		out, err := client.GetConsoleOutput(ctx, &ec2.GetConsoleOutputInput{InstanceId: aws.String(id)})
		if err != nil {
			t.Fatal(err)
		}
		text, err := base64.StdEncoding.DecodeString(aws.ToString(out.Output))
		if err != nil {
			t.Fatalf("output is not base64: %v", err)
		}
		fingerprints := between(string(text), "-----BEGIN SSH HOST KEY FINGERPRINTS-----\n", "-----END SSH HOST KEY FINGERPRINTS-----")
		wantLine := "256 " + ssh.FingerprintSHA256(hostKey.PublicKey()) + " root@ip-"
		if !strings.HasPrefix(fingerprints, wantLine) || !strings.HasSuffix(strings.TrimSpace(fingerprints), "(ED25519)") {
			t.Errorf("fingerprint block = %q, want a line %q… (ED25519)", fingerprints, wantLine)
		}
		keys := between(string(text), "-----BEGIN SSH HOST KEY KEYS-----\n", "-----END SSH HOST KEY KEYS-----")
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(keys))
		if err != nil || !bytes.Equal(pub.Marshal(), hostKey.PublicKey().Marshal()) {
			t.Errorf("keys block %q does not hold the user data host key (%v)", keys, err)
		}
	})

	t.Run("terminate kills processes and keeps the directory", func(t *testing.T) {
		if pid == 0 {
			t.Fatal("no detached process was started")
		}
		if _, err := client.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}}); err != nil {
			t.Fatal(err)
		}
		waitTerminated(t, client, []string{id})
		if processAlive(pid) {
			t.Errorf("detached process %d survived termination", pid)
		}
		for _, f := range []string{"recipe.sh", "out"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				t.Errorf("after termination: %v", err)
			}
		}
		if _, err := ssh.Dial("tcp", endpoint, &ssh.ClientConfig{
			User: "admin", Auth: []ssh.AuthMethod{ssh.PublicKeys(userKey)},
			HostKeyCallback: ssh.FixedHostKey(hostKey.PublicKey()), Timeout: 2 * time.Second,
		}); err == nil {
			t.Error("the terminated instance still accepts SSH")
		}
	})
}

// between returns the text between two markers ("" if absent).
func between(s, start, end string) string {
	_, after, ok := strings.Cut(s, start)
	if !ok {
		return ""
	}
	inner, _, _ := strings.Cut(after, end)
	return inner
}

// An instance launched without host keys in user data gets a fresh one, which a
// provisioner learns from the console output; without a key pair nobody logs in.
func TestGeneratedHostKeyInConsoleOutput(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)

	ids := run(t, client, launch{userData: "#!/bin/sh\necho not cloud-config\n"})
	waitRunning(t, client, ids)
	out, err := client.GetConsoleOutput(ctx, &ec2.GetConsoleOutputInput{InstanceId: aws.String(ids[0])})
	if err != nil {
		t.Fatal(err)
	}
	text, _ := base64.StdEncoding.DecodeString(aws.ToString(out.Output))
	keys := between(string(text), "-----BEGIN SSH HOST KEY KEYS-----\n", "-----END SSH HOST KEY KEYS-----")
	consoleKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(keys))
	if err != nil {
		t.Fatalf("console keys block %q: %v", keys, err)
	}

	var presented ssh.PublicKey
	anyKey, _ := newEd25519(t)
	_, err = ssh.Dial("tcp", endpointOf(t, client, ids[0]), &ssh.ClientConfig{
		User: "admin",
		Auth: []ssh.AuthMethod{ssh.PublicKeys(anyKey)},
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			presented = key
			return nil
		},
		Timeout: 5 * time.Second,
	})
	if err == nil {
		t.Error("logged in to an instance launched without a key pair")
	}
	if presented == nil || !bytes.Equal(presented.Marshal(), consoleKey.Marshal()) {
		t.Errorf("host presented %v, console output says %s", presented, keys)
	}
}

func TestBadHostKeyInUserDataFailsTheLaunch(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ids := run(t, client, launch{userData: "#cloud-config\nssh_keys:\n  ed25519_private: not a key\n"})
	// Not the terminated waiter: it gives up on the pending state a loaded machine may show
	// first.
	var inst types.Instance
	deadline := time.Now().Add(20 * time.Second)
	for inst = describe(t, client, &ec2.DescribeInstancesInput{InstanceIds: ids})[0]; inst.State.Name != types.InstanceStateNameTerminated; inst = describe(t, client, &ec2.DescribeInstancesInput{InstanceIds: ids})[0] {
		if time.Now().After(deadline) {
			t.Fatalf("instance with a bad host key is %s, want terminated", inst.State.Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if inst.StateReason == nil || aws.ToString(inst.StateReason.Code) != "Server.InternalError" {
		t.Errorf("state reason = %+v, want Server.InternalError", inst.StateReason)
	}
}
