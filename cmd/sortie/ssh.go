package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/sshaccess"
	"github.com/sortie-fleet/sortie/pkg/sshkey"
)

// SSHCmd is `sortie ssh JOB [INSTANCE] [-- CMD...]`: OpenSSH's ssh to one of the job's
// instances with the pinned host key and the fleet's login key.
type SSHCmd struct {
	JobID  string   `arg:"" name:"job-id" help:"The job whose instance to log in to."`
	Args   []string `arg:"" optional:"" passthrough:"" name:"instance-and-command" help:"[INSTANCE] [-- COMMAND...]: the instance (default: the job's first running one) and a command to run instead of a shell."`
	Binary string   `name:"ssh" help:"The OpenSSH client to run." default:"ssh" env:"SORTIE_SSH_BINARY"`
	loginFlags
}

// exitError carries a child's exit status out to main.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("ssh exited with status %d", e.code) }

// splitArgs reads [INSTANCE] [-- COMMAND...].
func splitArgs(args []string) (instance string, command []string, err error) {
	if len(args) > 0 && args[0] != "--" {
		if strings.HasPrefix(args[0], "-") {
			return "", nil, fmt.Errorf("unexpected %q: put flags before the job id, and the command after --", args[0])
		}
		instance, args = args[0], args[1:]
	}
	if len(args) == 0 {
		return instance, nil, nil
	}
	if args[0] != "--" {
		return "", nil, fmt.Errorf("unexpected %q after the instance: put the command after --", args[0])
	}
	return instance, args[1:], nil
}

// Run resolves the instance and its pinned key from EC2, writes a known_hosts holding only
// that key (and the login key when it comes from S3) to a private directory, runs ssh with
// the terminal, agent and environment of the caller, and removes the directory after.
func (c *SSHCmd) Run(ctx context.Context, g *Globals) error {
	instance, command, err := splitArgs(c.Args)
	if err != nil {
		return err
	}
	sess, err := openAccess(ctx, g, c.loginFlags, c.JobID)
	if err != nil {
		return err
	}
	defer sess.Close()
	t, err := sshaccess.Pick(sess.targets, instance)
	if err != nil {
		return err
	}
	argv := sshaccess.Command(t, sess.knownHosts, sess.identity, command)
	cmd := exec.Command(c.Binary, argv...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, g.Stdout, g.Stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return &exitError{code: exit.ExitCode()}
	}
	if err != nil {
		return fmt.Errorf("running %s: %w (install OpenSSH's client: apt-get install openssh-client)", c.Binary, err)
	}
	return nil
}

// SSHConfigCmd is `sortie ssh-config JOB`: ssh_config Host blocks and known_hosts lines
// for the job's instances, for the operator's own tools.
type SSHConfigCmd struct {
	JobID      string `arg:"" name:"job-id" help:"The job whose instances to describe."`
	KnownHosts string `help:"Write the instances' known_hosts here (the Host blocks point UserKnownHostsFile at it)." placeholder:"FILE" default:"sortie-{job}.known_hosts"`
	JSON       bool   `name:"json" help:"Print the instances (id, address, user, pinned host key, known_hosts line) as JSON instead."`
	loginFlags
}

// Run writes the known_hosts file and prints a Host block per running instance, named by
// instance id: `ssh -F FILE i-0abc`, or Ansible with ansible_ssh_common_args='-F FILE'.
// An identity is named only when the login key is a file (--key); a key in S3 is never
// written to disk by this command.
func (c *SSHConfigCmd) Run(ctx context.Context, g *Globals) error {
	topo := bus.Topology{Prefix: g.Prefix}
	if err := topo.Validate(); err != nil {
		return err
	}
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return err
	}
	if err := checkStack(ctx, s3.NewFromConfig(cfg, awsx.S3Options(cfg)), topo); err != nil {
		return err
	}
	ops, err := c.ops()
	if err != nil {
		return err
	}
	ts, err := sshaccess.Resolve(ctx, ec2.NewFromConfig(cfg), sshaccess.Query{Stack: g.Prefix, JobID: c.JobID, Local: c.Local, Ops: ops})
	if err != nil {
		return err
	}
	if c.JSON {
		b, err := json.MarshalIndent(struct {
			JobID     string             `json:"job_id"`
			Instances []sshaccess.Target `json:"instances"`
		}{c.JobID, ts}, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(g.Stdout, "%s\n", b)
		return err
	}
	path := strings.ReplaceAll(c.KnownHosts, "{job}", c.JobID)
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if err := os.WriteFile(abs, []byte(sshaccess.KnownHosts(ts)), 0o644); err != nil {
		return fmt.Errorf("writing known_hosts: %w", err)
	}
	identity := ""
	if loc, err := sshkey.ParseSource(c.Key); err == nil && loc.Path != "" {
		if identity, err = filepath.Abs(loc.Path); err != nil {
			return err
		}
	}
	fmt.Fprintf(g.Stdout, "# Sortie job %s: %d instance(s); host keys pinned in %s\n", c.JobID, len(ts), abs)
	if identity == "" {
		fmt.Fprintf(g.Stdout, "# login key: give ssh -i FILE (the services read it from SORTIE_SSH_KEY or s3://%s/...)\n", topo.SecretsBucketName())
	}
	fmt.Fprint(g.Stdout, "\n"+sshaccess.Config(ts, abs, identity))
	fmt.Fprintln(g.Stdout, "# known_hosts")
	for _, t := range ts {
		fmt.Fprintln(g.Stdout, "# "+t.KnownHosts)
	}
	return nil
}

// access is a job's resolved instances and the files OpenSSH reads, in a private
// directory removed by Close.
type access struct {
	targets    []sshaccess.Target
	dir        string
	knownHosts string
	identity   string
}

func (a *access) Close() error { return os.RemoveAll(a.dir) }

// openAccess resolves the job's running instances and writes their known_hosts and the
// login key (0600) into a fresh directory only the user can read.
func openAccess(ctx context.Context, g *Globals, f loginFlags, jobID string) (*access, error) {
	topo := bus.Topology{Prefix: g.Prefix}
	if err := topo.Validate(); err != nil {
		return nil, err
	}
	cfg, err := awsx.Load(ctx, "cli")
	if err != nil {
		return nil, err
	}
	s3c := s3.NewFromConfig(cfg, awsx.S3Options(cfg))
	if err := checkStack(ctx, s3c, topo); err != nil {
		return nil, err
	}
	ops, err := f.ops()
	if err != nil {
		return nil, err
	}
	ts, err := sshaccess.Resolve(ctx, ec2.NewFromConfig(cfg), sshaccess.Query{Stack: g.Prefix, JobID: jobID, Local: f.Local, Ops: ops})
	if err != nil {
		return nil, err
	}
	source, err := f.keySource(topo, ops)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "sortie-ssh-")
	if err != nil {
		return nil, err
	}
	a := &access{targets: ts, dir: dir, knownHosts: filepath.Join(dir, "known_hosts")}
	if err := os.WriteFile(a.knownHosts, []byte(sshaccess.KnownHosts(ts)), 0o600); err != nil {
		a.Close()
		return nil, err
	}
	if loc, _ := sshkey.ParseSource(source); loc.Path != "" {
		a.identity = loc.Path
		return a, nil
	}
	key, err := sshkey.Read(ctx, s3c, source)
	if err != nil {
		a.Close()
		return nil, err
	}
	defer clear(key)
	a.identity = filepath.Join(dir, "id")
	if err := os.WriteFile(a.identity, key, 0o600); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}
