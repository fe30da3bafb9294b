package sshaccess

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/hostkey"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

type fakeEC2 struct {
	instances []ec2types.Instance
	console   map[string]string
	filters   []ec2types.Filter
}

func (f *fakeEC2) DescribeInstances(_ context.Context, in *ec2.DescribeInstancesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	f.filters = in.Filters
	return &ec2.DescribeInstancesOutput{Reservations: []ec2types.Reservation{{Instances: f.instances}}}, nil
}

func (f *fakeEC2) GetConsoleOutput(_ context.Context, in *ec2.GetConsoleOutputInput, _ ...func(*ec2.Options)) (*ec2.GetConsoleOutputOutput, error) {
	out := f.console[aws.ToString(in.InstanceId)]
	return &ec2.GetConsoleOutputOutput{Output: aws.String(base64.StdEncoding.EncodeToString([]byte(out)))}, nil
}

func instance(id string, state ec2types.InstanceStateName, kv ...string) ec2types.Instance {
	in := ec2types.Instance{InstanceId: aws.String(id), State: &ec2types.InstanceState{Name: state}, PrivateIpAddress: aws.String("10.0.0.7")}
	for i := 0; i+1 < len(kv); i += 2 {
		in.Tags = append(in.Tags, ec2types.Tag{Key: aws.String(kv[i]), Value: aws.String(kv[i+1])})
	}
	return in
}

func TestResolve(t *testing.T) {
	tagged := cloudtest.NewHostKey(t)
	printed := cloudtest.NewHostKey(t)
	console := hostkey.ConsoleBegin + "\n" + printed.Authorized + "\n" + hostkey.ConsoleEnd + "\n"
	run := ec2types.InstanceStateNameRunning
	tests := []struct {
		name      string
		instances []ec2types.Instance
		local     bool
		want      string // "" = error expected
		wantErr   string
		wantKey   ssh.PublicKey
		source    string
	}{
		{"tagged key, private IP", []ec2types.Instance{instance("i-1", run, tags.HostKey, tagged.Authorized, tags.SSHEndpoint, "127.0.0.1:2222", tags.Template, "demo")},
			false, "10.0.0.7:22", "", tagged.Public, SourceTag},
		{"local mode honours the endpoint tag", []ec2types.Instance{instance("i-1", run, tags.HostKey, tagged.Authorized, tags.SSHEndpoint, "127.0.0.1:2222")},
			true, "127.0.0.1:2222", "", tagged.Public, SourceTag},
		{"no tag: the console's key", []ec2types.Instance{instance("i-2", run)}, false, "10.0.0.7:22", "", printed.Public, SourceConsole},
		{"a tag that is no key", []ec2types.Instance{instance("i-1", run, tags.HostKey, "ssh-ed25519 garbage")}, false, "", "is not a public key", nil, ""},
		{"no instance at all", nil, false, "", "no instance of job job-1 in stack st: check the job id", nil, ""},
		{"only terminated instances", []ec2types.Instance{instance("i-1", ec2types.InstanceStateNameTerminated)}, false, "", "has no running instance (its 1 instance(s) have ended): its logs are archived, try `sortie logs job-1`", nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeEC2{instances: tc.instances, console: map[string]string{"i-2": console}}
			ts, err := Resolve(context.Background(), f, Query{Stack: "st", JobID: "job-1", Local: tc.local, Ops: opsconfig.Default()})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := ts[0]
			if got.Addr != tc.want || got.User != "sortie" || got.HostKeySource != tc.source || string(got.HostKey.Marshal()) != string(tc.wantKey.Marshal()) {
				t.Errorf("target %+v", got)
			}
			if !strings.HasSuffix(got.KnownHosts, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(tc.wantKey)))) {
				t.Errorf("known_hosts %q does not pin the key", got.KnownHosts)
			}
			var stack, job bool
			for _, fl := range f.filters {
				stack = stack || (aws.ToString(fl.Name) == "tag:"+tags.Stack && fl.Values[0] == "st")
				job = job || (aws.ToString(fl.Name) == "tag:"+tags.JobID && fl.Values[0] == "job-1")
			}
			if !stack || !job {
				t.Errorf("filters %+v: want the stack's and the job's", f.filters)
			}
		})
	}
}

func TestRendering(t *testing.T) {
	k := cloudtest.NewHostKey(t)
	ts := []Target{
		{InstanceID: "i-1", Addr: "127.0.0.1:2201", User: "sortie", HostKey: k.Public, KnownHosts: KnownHostsLine("127.0.0.1:2201", k.Public)},
		{InstanceID: "i-2", Addr: "10.0.0.8:22", User: "ops", HostKey: k.Public, KnownHosts: KnownHostsLine("10.0.0.8:22", k.Public)},
	}
	if !strings.HasPrefix(ts[0].KnownHosts, "[127.0.0.1]:2201 ssh-ed25519 ") || !strings.HasPrefix(ts[1].KnownHosts, "10.0.0.8 ssh-ed25519 ") {
		t.Errorf("known_hosts lines %q %q", ts[0].KnownHosts, ts[1].KnownHosts)
	}
	argv := strings.Join(Command(ts[0], "/t/kh", "/t/id", []string{"cat", ".sortie/job.env"}), " ")
	for _, want := range []string{"-o StrictHostKeyChecking=yes", "-o UserKnownHostsFile=/t/kh", "-o GlobalKnownHostsFile=/dev/null", "-o UpdateHostKeys=no", "-o IdentityFile=/t/id", "-o IdentitiesOnly=yes", "-p 2201 -l sortie -- 127.0.0.1 cat .sortie/job.env"} {
		if !strings.Contains(argv, want) {
			t.Errorf("argv %q lacks %q", argv, want)
		}
	}
	cfg := Config(ts, "/t/my kh", "")
	for _, want := range []string{"Host i-1\n  HostName 127.0.0.1\n  Port 2201\n  User sortie\n", "Host i-2\n  HostName 10.0.0.8\n  Port 22\n  User ops\n", `UserKnownHostsFile "/t/my kh"`, "StrictHostKeyChecking yes"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	if strings.Contains(cfg, "IdentityFile") {
		t.Errorf("an identity named without a key file:\n%s", cfg)
	}
	if _, err := Pick(ts, "i-9"); err == nil || !strings.Contains(err.Error(), "pick one of i-1, i-2") {
		t.Errorf("Pick unknown: %v", err)
	}
	if got, err := Pick(ts, ""); err != nil || got.InstanceID != "i-1" {
		t.Errorf("Pick default: %v %v", got.InstanceID, err)
	}
	var none *NoInstancesError
	if !errors.As(error(&NoInstancesError{JobID: "j", Stack: "s"}), &none) {
		t.Error("NoInstancesError")
	}
}
