package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/sshkey"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// sleeperOps is the embedded configuration plus a recipe whose workload prints a line
// every 200 ms for a while: a job that stays up long enough to log in to.
func sleeperOps(t *testing.T) *opsconfig.Config {
	t.Helper()
	yaml := string(opsconfig.DefaultYAML()) + `
  sleeper:
    params:
      n: {pattern: '[0-9]{1,3}', required: true}
    steps:
      - name: work
        start:
          argv: [sh, -c, 'i=0; while [ $i -lt "$1" ]; do i=$((i+1)); echo "line $i"; sleep 0.2; done', sleeper, '{{n}}']
          log: work.log
`
	ops, err := opsconfig.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return ops
}

// submitSleeper submits a one-instance job of the sleeper recipe printing n lines and
// waits until its workload runs (its log has a first line).
func submitSleeper(t *testing.T, prefix, jobID string, n string) {
	t.Helper()
	out, err := runCLI(t, "--prefix", prefix, "submit", "--job-id", jobID, "--template", "demo", "--profile", "demo-fast",
		"--recipe", "sleeper", "--count", "1", "--param", "n="+n, "--deadline", "60s")
	if err != nil {
		t.Fatalf("submit: %v\n%s", err, out)
	}
}

func requireOpenSSH(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("ssh"); err != nil {
		cloudtest.MissingTool(t, "OpenSSH's ssh is not installed (apt-get install openssh-client)")
	}
}

// TestSSHThroughOpenSSH logs in to a running job's instance with Debian's OpenSSH client,
// trusting only the host key Sortie pinned: `sortie ssh JOB -- cat .sortie/job.env` prints
// the job's ids; the Host blocks of `sortie ssh-config` work with plain `ssh -F`; a
// pinned key that is not the instance's is refused, and nothing is added to any
// known_hosts.
func TestSSHThroughOpenSSH(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: starts the whole stack")
	}
	requireOpenSSH(t)
	const prefix = "clissh"
	st, _ := startDevStackWith(t, prefix, 1, sleeperOps(t))
	t.Setenv("SORTIE_LOCAL_MODE", "1")
	home := t.TempDir() // ssh must not read or write the user's own files
	t.Setenv("HOME", home)
	jobID := "cli-ssh-" + randomHex(4)
	submitSleeper(t, prefix, jobID, "400")

	var instance string
	cloudtest.Eventually(t, 60*time.Second, func() error {
		out, err := runCLI(t, "--prefix", prefix, "ssh", jobID, "--", "cat", ".sortie/job.env")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "SORTIE_JOB_ID="+jobID) {
			return fmt.Errorf("ssh printed %q", out)
		}
		for _, l := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(l, "SORTIE_INSTANCE_ID="); ok {
				instance = v
			}
		}
		return nil
	})
	if instance == "" {
		t.Fatal("job.env names no instance")
	}

	t.Run("a named instance and the exit status", func(t *testing.T) {
		out, err := runCLI(t, "--prefix", prefix, "ssh", jobID, instance, "--", "exit", "3")
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 3 {
			t.Fatalf("want exit status 3, got %v\n%s", err, out)
		}
		out, err = runCLI(t, "--prefix", prefix, "ssh", jobID, "i-0000000000000000", "--", "true")
		if err == nil || !strings.Contains(err.Error(), "pick one of "+instance) {
			t.Errorf("unknown instance: %v\n%s", err, out)
		}
	})

	t.Run("ssh-config with plain ssh -F", func(t *testing.T) {
		dir := t.TempDir()
		key, err := sshkey.Read(context.Background(), st.S3, st.SSHKey)
		if err != nil {
			t.Fatal(err)
		}
		keyFile := filepath.Join(dir, "id")
		cloudtest.WriteFile(t, keyFile, key, 0o600)
		kh := filepath.Join(dir, "kh")
		out, err := runCLI(t, "--prefix", prefix, "ssh-config", "--key", keyFile, "--known-hosts", kh, jobID)
		if err != nil {
			t.Fatalf("ssh-config: %v\n%s", err, out)
		}
		for _, want := range []string{"Host " + instance, "StrictHostKeyChecking yes", "UserKnownHostsFile " + kh, "UpdateHostKeys no", "IdentityFile " + keyFile} {
			if !strings.Contains(out, want) {
				t.Errorf("config lacks %q:\n%s", want, out)
			}
		}
		cfg := filepath.Join(dir, "config")
		cloudtest.WriteFile(t, cfg, []byte(out), 0o600)
		khBefore, _ := os.ReadFile(kh)
		got, err := exec.Command("ssh", "-F", cfg, instance, "cat", ".sortie/job.env").CombinedOutput()
		if err != nil || !strings.Contains(string(got), "SORTIE_INSTANCE_ID="+instance) {
			t.Errorf("ssh -F: %v\n%s", err, got)
		}
		if khAfter, _ := os.ReadFile(kh); !bytes.Equal(khBefore, khAfter) {
			t.Errorf("ssh changed the known_hosts:\n%s\nwas\n%s", khAfter, khBefore)
		}

		out, err = runCLI(t, "--prefix", prefix, "ssh-config", "--json", jobID)
		if err != nil || !strings.Contains(out, `"instance_id": "`+instance+`"`) || !strings.Contains(out, `"host_key_source": "tag"`) {
			t.Errorf("ssh-config --json: %v\n%s", err, out)
		}
	})

	t.Run("a host key that is not the instance's is refused", func(t *testing.T) {
		other := cloudtest.NewHostKey(t)
		if _, err := st.EC2.CreateTags(context.Background(), &ec2.CreateTagsInput{
			Resources: []string{instance},
			Tags:      []ec2types.Tag{{Key: aws.String(tags.HostKey), Value: aws.String(other.Authorized)}},
		}); err != nil {
			t.Fatal(err)
		}
		out, err := runCLI(t, "--prefix", prefix, "ssh", jobID, "--", "echo", "reached")
		if err == nil || strings.Contains(out, "reached") {
			t.Fatalf("a wrong pinned key was accepted: %v\n%s", err, out)
		}
		if !strings.Contains(out, "Host key verification failed") {
			t.Errorf("ssh's refusal not shown:\n%s", out)
		}
		entries, _ := os.ReadDir(filepath.Join(home, ".ssh"))
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "known_hosts") {
				t.Errorf("ssh wrote %s", e.Name())
			}
		}
	})
}
