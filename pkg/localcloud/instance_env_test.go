package localcloud

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"golang.org/x/crypto/ssh"
)

// InstanceEnv reaches every command (as an AMI's PATH would) without overriding the
// cloud's own variables, and OnExec sees each command exactly as the client sent it.
func TestInstanceEnvAndExecAudit(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []string
	c := newCloud(t, Options{
		InstanceEnv: []string{"SORTIE_TOOLS=/opt/tools", "AWS_ENDPOINT_URL=http://wrong.invalid"},
		OnExec: func(id, command string) {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, id+" "+command)
		},
	})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)
	userKey, _ := newEd25519(t)
	if _, err := client.ImportKeyPair(ctx, &ec2.ImportKeyPairInput{
		KeyName: aws.String("env-key"), PublicKeyMaterial: ssh.MarshalAuthorizedKey(userKey.PublicKey()),
	}); err != nil {
		t.Fatal(err)
	}
	hostKey, hostKeyPEM := newEd25519(t)
	ids := run(t, client, launch{keyName: "env-key", userData: cloudConfigWithHostKey(hostKeyPEM)})
	waitRunning(t, client, ids)
	conn, err := ssh.Dial("tcp", endpointOf(t, client, ids[0]), &ssh.ClientConfig{
		User: "sortie", Auth: []ssh.AuthMethod{ssh.PublicKeys(userKey)},
		HostKeyCallback: ssh.FixedHostKey(hostKey.PublicKey()), Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	const cmd = `printf '%s|%s' "$SORTIE_TOOLS" "$AWS_ENDPOINT_URL"`
	got := sshRun(t, conn, cmd, "")
	if want := "/opt/tools|" + c.URL(); got != want {
		t.Errorf("environment = %q, want %q (InstanceEnv present, the cloud's endpoint winning)", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || seen[0] != ids[0]+" "+cmd {
		t.Errorf("OnExec saw %q, want exactly [%q]", seen, ids[0]+" "+cmd)
	}
	if strings.Contains(strings.Join(seen, ""), "wrong.invalid") {
		t.Error("audit hook saw an expanded command; it must see it as sent")
	}
}
