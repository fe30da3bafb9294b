// Package sshaccess gives an operator SSH access to a job's instances the way Sortie itself
// reaches them: the address from EC2 (pkg/sshaddr), the host key Sortie pinned (the
// sortie:host-key tag the provisioner wrote at launch, or the key the instance printed on
// its console), and the fleet's login key; rendered as an OpenSSH command line, ssh_config
// Host blocks and known_hosts lines that trust no other key.
package sshaccess

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/sshaddr"
	"github.com/sortie-fleet/sortie/pkg/tags"
	"github.com/sortie-fleet/sortie/pkg/verify"
)

// EC2API is the EC2 calls Resolve makes.
type EC2API interface {
	DescribeInstances(ctx context.Context, params *ec2.DescribeInstancesInput, optFns ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
	GetConsoleOutput(ctx context.Context, params *ec2.GetConsoleOutputInput, optFns ...func(*ec2.Options)) (*ec2.GetConsoleOutputOutput, error)
}

var _ EC2API = (*ec2.Client)(nil)

// Host key sources a Target names.
const (
	SourceTag     = "tag"     // the sortie:host-key tag: the fleet's derived key
	SourceConsole = "console" // the block the instance printed on its console at first boot
)

// Target is one instance and how to log in to it.
type Target struct {
	InstanceID    string        `json:"instance_id"`
	State         string        `json:"state"`
	Addr          string        `json:"address"` // host:port
	User          string        `json:"user"`
	HostKey       ssh.PublicKey `json:"-"`
	HostKeyText   string        `json:"host_key"`        // authorized_keys format
	HostKeySource string        `json:"host_key_source"` // SourceTag or SourceConsole
	KnownHosts    string        `json:"known_hosts"`     // the known_hosts line pinning HostKey at Addr
}

// Query selects a job's instances.
type Query struct {
	Stack string // the stack's prefix (sortie:stack); required
	JobID string // sortie:job-id; required
	// Local honours the local cloud's sortie:ssh-endpoint tag (--local, SORTIE_LOCAL_MODE=1).
	Local bool
	// Ops gives each instance's template (its sortie:template tag): the login user and
	// whether it is reached on its public IP. Nil: the default user, private IPs.
	Ops *opsconfig.Config
	// ConsoleWait bounds the wait for a console host key block (default 10 s).
	ConsoleWait time.Duration
}

// NoInstancesError says the job has no instance to log in to.
type NoInstancesError struct {
	JobID, Stack string
	Ended        int // instances of the job that are no longer running
}

func (e *NoInstancesError) Error() string {
	if e.Ended > 0 {
		return fmt.Sprintf("job %s has no running instance (its %d instance(s) have ended): its logs are archived, try `sortie logs %s`", e.JobID, e.Ended, e.JobID)
	}
	return fmt.Sprintf("no instance of job %s in stack %s: check the job id (`sortie status` lists the stack's jobs) and --prefix", e.JobID, e.Stack)
}

// Resolve returns the job's running instances, sorted by id, each with its address and
// pinned host key. An instance whose key Sortie cannot vouch for is an error: nothing is
// ever trusted on first use.
func Resolve(ctx context.Context, api EC2API, q Query) ([]Target, error) {
	if q.Stack == "" || q.JobID == "" {
		return nil, errors.New("resolving instances: stack and job id are required")
	}
	if q.ConsoleWait <= 0 {
		q.ConsoleWait = 10 * time.Second
	}
	var running []ec2types.Instance
	ended := 0
	p := ec2.NewDescribeInstancesPaginator(api, &ec2.DescribeInstancesInput{
		Filters: []ec2types.Filter{
			{Name: aws.String("tag:" + tags.Stack), Values: []string{q.Stack}},
			{Name: aws.String("tag:" + tags.JobID), Values: []string{q.JobID}},
		},
		MaxResults: aws.Int32(1000),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("describing the instances of job %s: %w", q.JobID, err)
		}
		for _, r := range page.Reservations {
			for _, in := range r.Instances {
				if verify.Running(in) {
					running = append(running, in)
				} else {
					ended++
				}
			}
		}
	}
	if len(running) == 0 {
		return nil, &NoInstancesError{JobID: q.JobID, Stack: q.Stack, Ended: ended}
	}
	slices.SortFunc(running, func(a, b ec2types.Instance) int {
		return strings.Compare(aws.ToString(a.InstanceId), aws.ToString(b.InstanceId))
	})
	out := make([]Target, 0, len(running))
	for _, in := range running {
		t, err := target(ctx, api, q, in)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

func target(ctx context.Context, api EC2API, q Query, in ec2types.Instance) (Target, error) {
	id := aws.ToString(in.InstanceId)
	tg := map[string]string{}
	for _, t := range in.Tags {
		tg[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	user, public := opsconfig.DefaultUser, false
	if q.Ops != nil {
		if t, err := q.Ops.Template(tg[tags.Template]); err == nil {
			user, public = t.User, t.PublicAddress()
		}
	}
	addr, err := sshaddr.Mode{Local: q.Local, PublicIP: public}.Of(in)
	if err != nil {
		return Target{}, err
	}
	var key ssh.PublicKey
	source := SourceTag
	if text, ok := tg[tags.HostKey]; ok {
		key, _, _, _, err = ssh.ParseAuthorizedKey([]byte(text))
		if err != nil {
			return Target{}, fmt.Errorf("instance %s: its %s tag is not a public key: %w", id, tags.HostKey, err)
		}
	} else {
		source = SourceConsole
		wait, cancel := context.WithTimeout(ctx, q.ConsoleWait)
		defer cancel()
		key, err = verify.ConsoleHostKey(wait, api, id, verify.ConsolePoll{First: 200 * time.Millisecond, Max: 2 * time.Second})
		if err != nil {
			return Target{}, fmt.Errorf("instance %s: no pinned host key (no %s tag, nothing usable on its console): %w", id, tags.HostKey, err)
		}
	}
	return Target{
		InstanceID:    id,
		State:         string(in.State.Name),
		Addr:          addr,
		User:          user,
		HostKey:       key,
		HostKeyText:   strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))),
		HostKeySource: source,
		KnownHosts:    KnownHostsLine(addr, key),
	}, nil
}

// KnownHostsLine is OpenSSH's known_hosts line for key at addr (host:port): "host key" for
// port 22, "[host]:port key" otherwise.
func KnownHostsLine(addr string, key ssh.PublicKey) string {
	return knownhosts.Line([]string{knownhosts.Normalize(addr)}, key)
}

// Pick returns the target named id, or the first when id is empty.
func Pick(ts []Target, id string) (Target, error) {
	if id == "" {
		if len(ts) == 0 {
			return Target{}, errors.New("no instance")
		}
		return ts[0], nil
	}
	for _, t := range ts {
		if t.InstanceID == id {
			return t, nil
		}
	}
	ids := make([]string, len(ts))
	for i, t := range ts {
		ids[i] = t.InstanceID
	}
	return Target{}, fmt.Errorf("instance %s is not a running instance of this job: pick one of %s", id, strings.Join(ids, ", "))
}

// Options are the OpenSSH options that make ssh trust only the pinned key: the generated
// known_hosts file and nothing else, strict checking, no learning of keys the server
// offers later (UpdateHostKeys), and only the given identity.
func Options(knownHostsFile, identityFile string) []string {
	opts := []string{
		"StrictHostKeyChecking=yes",
		"UserKnownHostsFile=" + knownHostsFile,
		"GlobalKnownHostsFile=/dev/null",
		"UpdateHostKeys=no",
		"CheckHostIP=no",
		"HashKnownHosts=no",
	}
	if identityFile != "" {
		opts = append(opts, "IdentityFile="+identityFile, "IdentitiesOnly=yes")
	}
	return opts
}

// Command returns the argv (after the ssh binary's name) that logs in to t, running
// command when it is not empty.
func Command(t Target, knownHostsFile, identityFile string, command []string) []string {
	host, port, err := net.SplitHostPort(t.Addr)
	if err != nil {
		host, port = t.Addr, "22"
	}
	var argv []string
	for _, o := range Options(knownHostsFile, identityFile) {
		argv = append(argv, "-o", o)
	}
	argv = append(argv, "-p", port, "-l", t.User, "--", host)
	return append(argv, command...)
}

// Config renders an ssh_config Host block per target, named by instance id, so that
// `ssh -F FILE i-0abc` (or Ansible with ansible_ssh_common_args="-F FILE") logs in with
// the pinned key.
func Config(ts []Target, knownHostsFile, identityFile string) string {
	var b strings.Builder
	for _, t := range ts {
		host, port, err := net.SplitHostPort(t.Addr)
		if err != nil {
			host, port = t.Addr, "22"
		}
		fmt.Fprintf(&b, "Host %s\n  HostName %s\n  Port %s\n  User %s\n", t.InstanceID, host, port, t.User)
		for _, o := range Options(knownHostsFile, identityFile) {
			k, v, _ := strings.Cut(o, "=")
			fmt.Fprintf(&b, "  %s %s\n", k, quoteConfig(v))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// KnownHosts is the known_hosts file of ts: one line per target.
func KnownHosts(ts []Target) string {
	var b strings.Builder
	for _, t := range ts {
		b.WriteString(t.KnownHosts + "\n")
	}
	return b.String()
}

// quoteConfig quotes an ssh_config value holding spaces.
func quoteConfig(v string) string {
	if strings.ContainsAny(v, " \t\"") {
		return `"` + strings.ReplaceAll(v, `"`, ``) + `"`
	}
	return v
}
