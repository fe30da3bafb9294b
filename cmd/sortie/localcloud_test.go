package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/sortie-fleet/sortie/pkg/awsx"
	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
)

// `sortie localcloud interrupt` and `lose` inject faults into a local cloud running
// elsewhere (here in-process, reached only through its endpoint): the stack's EC2 events
// queue gets the notices, and the instances end as EC2 would end them.
func TestLocalcloudInterruptAndLose(t *testing.T) {
	cloud := useCloud(t)
	topo := bus.Topology{Prefix: "cli" + strings.ToLower(randomHex(3))}
	if out, err := runCLI(t, "--prefix", topo.Prefix, "infra", "up"); err != nil {
		t.Fatalf("infra up: %v\n%s", err, out)
	}
	cfg := awsx.ForEndpoint(cloud.URL())
	ec2c, sqsc := ec2.NewFromConfig(cfg), sqs.NewFromConfig(cfg)
	spot := cloudtest.Launch(t, ec2c, 1, cloudtest.LaunchSpec{Spot: true})[0].ID
	onDemand := cloudtest.Launch(t, ec2c, 1, cloudtest.LaunchSpec{})[0].ID

	out, err := runCLI(t, "localcloud", "interrupt", "--instance", spot, "--notice", "1s")
	if err != nil || !strings.Contains(out, "interruption warning sent") {
		t.Fatalf("localcloud interrupt: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "localcloud", "lose", "--instance", onDemand); err != nil {
		t.Fatalf("localcloud lose: %v\n%s", err, out)
	}
	got := cloudtest.EC2Notices(t, sqsc, cloudtest.QueueURL(t, sqsc, topo.EC2EventsQueueName()), 30*time.Second,
		func(n cloudtest.Notices) bool { return len(n[spot]) >= 3 && len(n[onDemand]) >= 2 })
	for id, want := range map[string][]string{
		spot:     {"spot-interruption-warning", "shutting-down", "terminated"},
		onDemand: {"shutting-down", "terminated"},
	} {
		var kinds []string
		for _, n := range got[id] {
			kinds = append(kinds, n.String())
		}
		if !slices.Equal(kinds, want) {
			t.Errorf("%s: notices %v, want %v", id, kinds, want)
		}
	}
	for id, reason := range map[string]string{spot: "Server.SpotInstanceTermination", onDemand: "Client.UserInitiatedShutdown"} {
		in := cloudtest.DescribeInstances(t, ec2c, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})[0]
		if in.StateReason == nil || aws.ToString(in.StateReason.Code) != reason {
			t.Errorf("%s: state reason %+v, want %s", id, in.StateReason, reason)
		}
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"interrupt", "--instance", "i-0123456789abcdef0"}, "no such instance"},
		{[]string{"interrupt", "--instance", onDemand, "--notice", "1s"}, "not a spot instance"},
		{[]string{"interrupt", "--instance", spot}, "not running"},
		{[]string{"interrupt", "--instance", "not-an-id"}, "want an instance id"},
		{[]string{"lose", "--instance", onDemand}, "not running"},
		{[]string{"lose", "--instance", "i-0123456789abcdef0"}, "no such instance"},
	} {
		out, err := runCLI(t, append([]string{"localcloud"}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("localcloud %v: %v (%s), want an error saying %q", tt.args, err, out, tt.want)
		}
	}
}
