package provisioner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/bus"
	"github.com/sortie-fleet/sortie/pkg/cloudtest"
	"github.com/sortie-fleet/sortie/pkg/events"
	"github.com/sortie-fleet/sortie/pkg/hostkey"
	"github.com/sortie-fleet/sortie/pkg/ledger"
	"github.com/sortie-fleet/sortie/pkg/localcloud"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/pkg/tags"
)

// TestProvisionerOnLocalCloud runs the provisioner against the local cloud: a real
// FleetPlanned in, real instances (each a real SSH host) and a real FleetLaunched out.
func TestProvisionerOnLocalCloud(t *testing.T) {
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	ctx := t.Context()
	client := s.EC2

	// The demo template's key pair, with a private key the test holds.
	login := cloudtest.NewSigner(t)
	if _, err := client.ImportKeyPair(ctx, &ec2.ImportKeyPairInput{
		KeyName: aws.String("sortie-dev"), PublicKeyMaterial: ssh.MarshalAuthorizedKey(login.PublicKey()),
	}); err != nil {
		t.Fatal(err)
	}

	launchedQ := s.Subscribe(t, bus.FleetLaunched)
	terminatedQ := s.Subscribe(t, bus.FleetTerminated)
	serve(t, s, 20*time.Second)

	fleet := func(id string) events.FleetPlanned {
		fp := plan()
		fp.Header = events.NewHeader(id, "corr-"+id, time.Now())
		fp.FleetID = id
		fp.SubmittedAt = time.Now().UTC().Truncate(time.Second)
		return fp
	}
	// launchedEvents waits for n FleetLaunched of a fleet.
	launchedEvents := func(t *testing.T, id string, n int) []events.FleetLaunched {
		t.Helper()
		got := cloudtest.Collect(t, s.SQS, launchedQ, 30*time.Second, cloudtest.HasAll(n, id))
		if len(got[id]) != n {
			t.Fatalf("%d FleetLaunched for %s, want %d (got %v)", len(got[id]), id, n, slices.Sorted(maps.Keys(got)))
		}
		var out []events.FleetLaunched
		for _, m := range got[id] {
			fl, err := events.DecodeFleetLaunched([]byte(aws.ToString(m.Body)))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, fl)
		}
		return out
	}
	// tagged lists every instance, in any state, tagged with the fleet.
	tagged := func(t *testing.T, id string) map[string]types.Instance {
		t.Helper()
		m := map[string]types.Instance{}
		for _, in := range cloudtest.DescribeInstances(t, client, &ec2.DescribeInstancesInput{Filters: []types.Filter{
			{Name: aws.String("tag:sortie:fleet"), Values: []string{id}},
		}}) {
			m[aws.ToString(in.InstanceId)] = in
		}
		return m
	}
	idsOf := func(fl events.FleetLaunched) []string {
		var ids []string
		for _, in := range fl.Instances {
			ids = append(ids, in.ID)
		}
		slices.Sort(ids)
		return ids
	}
	hostKeyOf := func(t *testing.T, id string) ssh.PublicKey {
		t.Helper()
		_, signer, err := hostkey.Derive(testSecret, id, 1, nonceA)
		if err != nil {
			t.Fatal(err)
		}
		return signer.PublicKey()
	}

	t.Run("launches 3 tagged instances whose host key is pinned", func(t *testing.T) {
		before := time.Now().UTC().Truncate(time.Second)
		s.Publish(t, fleet("fleet-a"))
		fl := launchedEvents(t, "fleet-a", 1)[0]
		after := time.Now().UTC()

		pinned := hostKeyOf(t, "fleet-a")
		if fl.HostKey != strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pinned))) {
			t.Errorf("FleetLaunched.HostKey %q is not the derived key", fl.HostKey)
		}
		if fl.KeyName != "sortie-dev" || fl.Recipe != "demo-worker" || fl.PlanRevision != 1 || len(fl.Instances) != 3 {
			t.Fatalf("FleetLaunched %+v", fl)
		}
		instances := tagged(t, "fleet-a")
		if !slices.Equal(slices.Sorted(maps.Keys(instances)), idsOf(fl)) {
			t.Fatalf("tagged instances %v, FleetLaunched lists %v", instances, idsOf(fl))
		}
		for _, in := range fl.Instances {
			got := instances[in.ID]
			tags := cloudtest.Tags(got)
			lease, err := time.Parse(time.RFC3339, tags["sortie:lease-expires"])
			if err != nil || lease.Before(before.Add(30*time.Minute)) || lease.After(after.Add(30*time.Minute)) {
				t.Errorf("%s: lease %q (%v), want now + 30 min", in.ID, tags["sortie:lease-expires"], err)
			}
			delete(tags, "sortie:lease-expires")
			want := map[string]string{
				"Name": "sortie-fleet-a", "sortie:job-id": "fleet-a", "sortie:fleet": "fleet-a", "sortie:stage": "launched", "sortie:template": "demo",
				"sortie:correlation-id": "corr-fleet-a", "sortie:ssh-endpoint": in.SSHEndpoint, "sortie:stack": s.Topology.Prefix,
				"sortie:hostkey-nonce": nonceA, "sortie:host-key": fl.HostKey, "sortie:market": "on-demand", "sortie:hourly-price": "0.067",
				"sortie:plan-revision": "1",
			}
			if in.Market != events.MarketOnDemand || in.HourlyPrice != 0.067 {
				t.Errorf("%s: market %q at $%v an hour in FleetLaunched, want on-demand at the profile's $0.067", in.ID, in.Market, in.HourlyPrice)
			}
			if len(tags) != len(want) {
				t.Errorf("%s: tags %v, want %v and a lease", in.ID, tags, want)
			}
			for k, v := range want {
				if tags[k] != v {
					t.Errorf("%s: tag %s = %q, want %q", in.ID, k, tags[k], v)
				}
			}
			if got.State.Name != types.InstanceStateNameRunning || got.InstanceType != "m3.medium" || in.InstanceType != "m3.medium" ||
				aws.ToString(got.ImageId) != "ami-0123456789abcdef0" || aws.ToString(got.SubnetId) != "subnet-0123456789abcdef0" ||
				aws.ToString(got.KeyName) != "sortie-dev" || aws.ToString(got.ClientToken) != clientToken(s.Topology.Prefix, "fleet-a", "1") ||
				aws.ToString(got.PrivateIpAddress) != in.PrivateIP {
				t.Errorf("%s: %+v", in.ID, got)
			}
			// IMDSv2 only, one hop: recorded and reported by the local cloud.
			if m := got.MetadataOptions; m == nil || m.HttpTokens != types.HttpTokensStateRequired ||
				aws.ToInt32(m.HttpPutResponseHopLimit) != 1 || m.HttpEndpoint != types.InstanceMetadataEndpointStateEnabled {
				t.Errorf("%s: metadata options %+v, want tokens required, hop limit 1, endpoint enabled", in.ID, m)
			}

			// The pinned key is the one the instance's SSH server presents.
			out := sshRun(t, in.SSHEndpoint, login, ssh.FixedHostKey(pinned), "echo pinned")
			if out != "pinned\n" {
				t.Errorf("%s: ssh echo printed %q", in.ID, out)
			}
		}
		// And pinning is real: another key is refused.
		otherKey := cloudtest.NewSigner(t).PublicKey()
		if _, err := sshDial(fl.Instances[0].SSHEndpoint, login, ssh.FixedHostKey(otherKey)); err == nil || !strings.Contains(err.Error(), "host key mismatch") {
			t.Errorf("dial pinned to another key: %v, want a host key mismatch", err)
		}
	})

	// handledDuplicate waits for the provisioner to have dropped a duplicate of the job's
	// plan (the ledger's claim was taken), then checks that no FleetLaunched followed it.
	handledDuplicate := func(t *testing.T, id string) {
		t.Helper()
		cloudtest.Eventually(t, 30*time.Second, func() error {
			for _, line := range strings.Split(s.Logs.String(), "\n") {
				if strings.Contains(line, `"duplicate FleetPlanned: nothing to do"`) && strings.Contains(line, `"job_id":"`+id+`"`) {
					return nil
				}
			}
			return fmt.Errorf("no duplicate FleetPlanned of %s logged yet", id)
		})
		if extra := cloudtest.Collect(t, s.SQS, launchedQ, 2*time.Second, nil)[id]; len(extra) != 0 {
			t.Errorf("%d more FleetLaunched for %s after the duplicate, want none", len(extra), id)
		}
	}

	t.Run("the same FleetPlanned again launches nothing and publishes nothing", func(t *testing.T) {
		s.Publish(t, fleet("fleet-a")) // another delivery of the plan above
		handledDuplicate(t, "fleet-a")
		if n := len(tagged(t, "fleet-a")); n != 3 {
			t.Errorf("%d instances tagged fleet-a, want the same 3", n)
		}

		// Two deliveries at once, racing each other: one launch, one FleetLaunched.
		fp := fleet("fleet-b")
		s.Publish(t, fp)
		s.Publish(t, fp)
		if fl := launchedEvents(t, "fleet-b", 1)[0]; len(fl.Instances) != 3 {
			t.Errorf("FleetLaunched lists %v, want 3 instances", idsOf(fl))
		}
		handledDuplicate(t, "fleet-b")
		if n := len(tagged(t, "fleet-b")); n != 3 {
			t.Errorf("%d instances tagged fleet-b, want 3", n)
		}
	})

	t.Run("a duplicate plan with another nonce pins the key its instances have", func(t *testing.T) {
		first := fleet("fleet-e")
		s.Publish(t, first)
		a := launchedEvents(t, "fleet-e", 1)[0]
		dup := fleet("fleet-e") // the job planned again: same fleet and revision, another nonce
		dup.Nonce = nonceB
		// As if the first launch's handler had died after its publish and before marking
		// the stage done in the ledger: the duplicate wins the claim and launches again.
		cloudtest.Eventually(t, 10*time.Second, func() error { // the mark follows the publish
			rec, err := s.Ledger().Get(t.Context(), "fleet-e")
			if err == nil && rec.DoneAt(ledger.Launched) == "" {
				err = errors.New("launch not marked done yet")
			}
			return err
		})
		if _, err := dynamodb.NewFromConfig(s.AWS).UpdateItem(t.Context(), &dynamodb.UpdateItemInput{
			TableName: aws.String(s.Topology.LedgerTableName()), Key: ledger.Key("fleet-e"),
			UpdateExpression: aws.String("REMOVE launched_at"),
		}); err != nil {
			t.Fatal(err)
		}
		s.Publish(t, dup)
		b := launchedEvents(t, "fleet-e", 1)[0]
		if !slices.Equal(idsOf(a), idsOf(b)) || len(tagged(t, "fleet-e")) != 3 {
			t.Fatalf("the duplicate plan launched %v, the first %v: want the same 3", idsOf(b), idsOf(a))
		}
		if a.HostKey != b.HostKey {
			t.Fatalf("the duplicate plan pins %q, the first %q: want the instances' key", b.HostKey, a.HostKey)
		}
		pinned, _, _, _, err := ssh.ParseAuthorizedKey([]byte(b.HostKey))
		if err != nil {
			t.Fatal(err)
		}
		if string(pinned.Marshal()) != string(hostKeyOf(t, "fleet-e").Marshal()) {
			t.Error("the pinned key is not the one derived with the first plan's nonce")
		}
		for _, in := range b.Instances {
			if got := cloudtest.Tags(tagged(t, "fleet-e")[in.ID])[tags.HostKeyNonce]; got != nonceA {
				t.Errorf("%s: %s = %q, want the first plan's %q", in.ID, tags.HostKeyNonce, got, nonceA)
			}
			if got := cloudtest.Tags(tagged(t, "fleet-e")[in.ID])[tags.HostKey]; got != a.HostKey {
				t.Errorf("%s: %s = %q, want the pinned %q", in.ID, tags.HostKey, got, a.HostKey)
			}
			if out := sshRun(t, in.SSHEndpoint, login, ssh.FixedHostKey(pinned), "echo ok"); out != "ok\n" {
				t.Errorf("%s: ssh printed %q", in.ID, out)
			}
		}
	})

	t.Run("a replacement revision launches only its count, with its own token, key and tag", func(t *testing.T) {
		id := "fleet-r"
		s.Publish(t, fleet(id))
		first := launchedEvents(t, id, 1)[0]
		rev2 := fleet(id)
		rev2.PlanRevision, rev2.Count = 2, 1
		s.Publish(t, rev2)
		fl := launchedEvents(t, id, 1)[0]
		if fl.PlanRevision != 2 || len(fl.Instances) != 1 || fl.PlannedCount != 1 {
			t.Fatalf("FleetLaunched revision %d with %v (planned %d), want revision 2 with 1 instance", fl.PlanRevision, idsOf(fl), fl.PlannedCount)
		}
		if slices.Contains(idsOf(first), fl.Instances[0].ID) {
			t.Fatalf("revision 2 reused %s of revision 1", fl.Instances[0].ID)
		}
		if fl.HostKey == first.HostKey {
			t.Error("revision 2 pins revision 1's host key, want its own")
		}
		instances := tagged(t, id)
		if len(instances) != 4 {
			t.Fatalf("%d instances tagged %s, want revision 1's 3 and revision 2's 1", len(instances), id)
		}
		for iid, in := range instances {
			rev, token := "1", clientToken(s.Topology.Prefix, id, "1")
			if iid == fl.Instances[0].ID {
				rev, token = "2", clientToken(s.Topology.Prefix, id, "2")
			}
			if got := cloudtest.Tags(in)[tags.PlanRevision]; got != rev {
				t.Errorf("%s: %s = %q, want %s", iid, tags.PlanRevision, got, rev)
			}
			if got := aws.ToString(in.ClientToken); got != token {
				t.Errorf("%s: client token %s, want revision %s's %s", iid, got, rev, token)
			}
		}
		pinned, _, _, _, err := ssh.ParseAuthorizedKey([]byte(fl.HostKey))
		if err != nil {
			t.Fatal(err)
		}
		if out := sshRun(t, fl.Instances[0].SSHEndpoint, login, ssh.FixedHostKey(pinned), "echo ok"); out != "ok\n" {
			t.Errorf("ssh printed %q", out)
		}
		cloudtest.Eventually(t, 10*time.Second, func() error {
			rec, err := s.Ledger().Get(t.Context(), id)
			switch {
			case err != nil:
				return err
			case rec.DoneAt(ledger.StageAt(ledger.Launched, 2)) == "":
				return errors.New("revision 2 not marked launched yet")
			case rec.RevisionState(2) != ledger.RevLaunched:
				return fmt.Errorf("revision 2's state %q, want launched", rec.RevisionState(2))
			case !slices.Equal(slices.Sorted(slices.Values(strings.Split(rec.Attrs["instances"], ","))), idsOf(first)):
				return fmt.Errorf("instances %q, want revision 1's %v", rec.Attrs["instances"], idsOf(first))
			case rec.Attrs["rev2_instances_launched"] != fl.Instances[0].ID:
				return fmt.Errorf("rev2_instances_launched %q, want %s", rec.Attrs["rev2_instances_launched"], fl.Instances[0].ID)
			}
			return nil
		})

		// The replacement plan delivered again: nothing new.
		s.Publish(t, rev2)
		handledDuplicate(t, id)
		if n := len(tagged(t, id)); n != 4 {
			t.Errorf("%d instances tagged %s after the duplicate, want 4", n, id)
		}

		// A replacement EC2 has no capacity for, in any type: recorded failed, nothing
		// terminal, nothing dead-lettered, the first revisions' instances untouched.
		s.Cloud.SetCapacityFault("m3.medium", true)
		s.Cloud.SetCapacityFault("c5.large", true)
		defer s.Cloud.SetCapacityFault("m3.medium", false)
		defer s.Cloud.SetCapacityFault("c5.large", false)
		rev3 := fleet(id)
		rev3.PlanRevision, rev3.Count = 3, 2
		s.Publish(t, rev3)
		cloudtest.Eventually(t, 30*time.Second, func() error {
			rec, err := s.Ledger().Get(t.Context(), id)
			if err != nil {
				return err
			}
			if st := rec.RevisionState(3); !strings.HasPrefix(st, ledger.RevFailed+": ") || !strings.Contains(st, "InsufficientInstanceCapacity") {
				return fmt.Errorf("revision 3's state %q, want failed for want of capacity", st)
			}
			return nil
		})
		if extra := cloudtest.Collect(t, s.SQS, launchedQ, 2*time.Second, nil)[id]; len(extra) != 0 {
			t.Errorf("%d FleetLaunched after the failed replacement, want none", len(extra))
		}
		if got := cloudtest.Collect(t, s.SQS, terminatedQ, time.Second, nil)[id]; len(got) != 0 {
			t.Errorf("%d FleetTerminated after the failed replacement, want none", len(got))
		}
		dlq := bus.DLQName(s.Topology.QueueName(bus.Provisioner, bus.FleetPlanned))
		if got := cloudtest.Collect(t, s.SQS, cloudtest.QueueURL(t, s.SQS, dlq), time.Second, nil)[id]; len(got) != 0 {
			t.Errorf("the failed replacement is dead-lettered: %d messages", len(got))
		}
		rec, err := s.Ledger().Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if rec.DoneAt(ledger.Rejected) != "" {
			t.Errorf("the job was rejected: %s", rec.Attrs["reason"])
		}
		live := 0
		for _, in := range tagged(t, id) {
			if in.State.Name == types.InstanceStateNameRunning {
				live++
			}
		}
		if live != 4 {
			t.Errorf("%d instances of %s running, want the 4 launched before", live, id)
		}
	})

	t.Run("no capacity for the planned type: falls back to the next, re-sized for it", func(t *testing.T) {
		s.Cloud.SetCapacityFault("m3.medium", true)
		defer s.Cloud.SetCapacityFault("m3.medium", false)
		// 4000 items in 2 min: 7 × m3.medium (300/min) as planned; c5.large does 600/min,
		// so 4000 / (600 × (119 s − the seconds since submission) / 60) → 4 of them
		// (for anything between 0 and 10 s since submission).
		fp := fleet("fleet-c")
		fp.Items, fp.DeadlineSeconds, fp.Count = 4000, 120, 7
		s.Publish(t, fp)
		fl := launchedEvents(t, "fleet-c", 1)[0]
		instances := tagged(t, "fleet-c")
		if len(instances) != 4 || len(fl.Instances) != 4 {
			t.Fatalf("%d instances tagged fleet-c, %d in the event, want 4", len(instances), len(fl.Instances))
		}
		if fl.PlannedInstanceType != "m3.medium" || fl.PlannedCount != 7 ||
			!strings.Contains(fl.Fallback, "m3.medium in subnet-0123456789abcdef0: InsufficientInstanceCapacity; re-sized for c5.large: 4000 items, 600/min per c5.large") {
			t.Errorf("FleetLaunched planned %d × %s, fallback %q", fl.PlannedCount, fl.PlannedInstanceType, fl.Fallback)
		}
		for _, in := range fl.Instances {
			got := instances[in.ID]
			if in.InstanceType != "c5.large" || got.InstanceType != "c5.large" {
				t.Errorf("%s: %s in the event, %s in EC2; want c5.large", in.ID, in.InstanceType, got.InstanceType)
			}
			if want := clientToken(s.Topology.Prefix, "fleet-c", "1", "c5.large", "subnet-0123456789abcdef0"); aws.ToString(got.ClientToken) != want {
				t.Errorf("%s: client token %s, want the fallback's %s", in.ID, aws.ToString(got.ClientToken), want)
			}
			if out := sshRun(t, in.SSHEndpoint, login, ssh.FixedHostKey(hostKeyOf(t, "fleet-c")), "echo ok"); out != "ok\n" {
				t.Errorf("%s: ssh printed %q", in.ID, out)
			}
		}
	})

	// checkMarket checks a fleet's instances: in EC2 (lifecycle, market and price tags) and in
	// its FleetLaunched.
	checkMarket := func(t *testing.T, fl events.FleetLaunched, market string, price string) {
		t.Helper()
		instances := tagged(t, fl.FleetID)
		if len(instances) != 3 || len(fl.Instances) != 3 {
			t.Fatalf("%d instances tagged %s, %d in the event, want 3", len(instances), fl.FleetID, len(fl.Instances))
		}
		for _, in := range fl.Instances {
			got := instances[in.ID]
			tg := cloudtest.Tags(got)
			if spot := got.InstanceLifecycle == types.InstanceLifecycleTypeSpot; spot != (market == events.MarketSpot) {
				t.Errorf("%s: EC2 lifecycle %q, want market %s", in.ID, got.InstanceLifecycle, market)
			}
			if tg[tags.Market] != market || tg[tags.HourlyPrice] != price {
				t.Errorf("%s: tags %s=%q %s=%q, want %s at %s", in.ID, tags.Market, tg[tags.Market], tags.HourlyPrice, tg[tags.HourlyPrice], market, price)
			}
			if in.Market != market || fmt.Sprint(in.HourlyPrice) != price {
				t.Errorf("%s: FleetLaunched says %s at %v, want %s at %s", in.ID, in.Market, in.HourlyPrice, market, price)
			}
		}
	}

	t.Run("a spot template launches spot instances", func(t *testing.T) {
		fp := fleet("fleet-s")
		fp.Template = "demo-spot"
		s.Publish(t, fp)
		fl := launchedEvents(t, "fleet-s", 1)[0]
		checkMarket(t, fl, events.MarketSpot, "0.02")
		if fl.Fallback != "" {
			t.Errorf("fallback %q, want none", fl.Fallback)
		}
		for id, in := range tagged(t, "fleet-s") {
			if got := aws.ToString(in.ClientToken); got != clientToken(s.Topology.Prefix, "fleet-s", "1") {
				t.Errorf("%s: client token %s, want the plan's", id, got)
			}
		}
	})

	t.Run("spot capacity refused: on-demand fallback, market in the event and tags", func(t *testing.T) {
		faults := []struct {
			code  string
			set   func()
			clear func()
		}{
			{"InsufficientInstanceCapacity", func() { s.Cloud.SetSpotFault("m3.medium", "InsufficientInstanceCapacity") }, func() { s.Cloud.SetSpotFault("m3.medium", "") }},
			{"MaxSpotInstanceCountExceeded", func() { s.Cloud.SetSpotFault("m3.medium", "MaxSpotInstanceCountExceeded") }, func() { s.Cloud.SetSpotFault("m3.medium", "") }},
			// The template's max price is $0.05 an hour.
			{"SpotMaxPriceTooLow", func() { s.Cloud.SetSpotPrice("m3.medium", 0.06) }, func() { s.Cloud.SetSpotPrice("m3.medium", 0) }},
		}
		for i, f := range faults {
			t.Run(f.code, func(t *testing.T) {
				f.set()
				defer f.clear()
				id := fmt.Sprintf("fleet-o%d", i)
				fp := fleet(id)
				fp.Template = "demo-spot"
				s.Publish(t, fp)
				fl := launchedEvents(t, id, 1)[0]
				checkMarket(t, fl, events.MarketOnDemand, "0.067")
				if want := "m3.medium (spot) in subnet-0123456789abcdef0: " + f.code; !strings.HasPrefix(fl.Fallback, want) {
					t.Errorf("fallback %q, want it to start %q", fl.Fallback, want)
				}
				if fl.PlannedInstanceType != "m3.medium" || fl.PlannedCount != 3 {
					t.Errorf("planned %d × %s", fl.PlannedCount, fl.PlannedInstanceType)
				}
				for iid, in := range tagged(t, id) {
					if got, want := aws.ToString(in.ClientToken), clientToken(s.Topology.Prefix, id, "1", "m3.medium", "subnet-0123456789abcdef0"); got != want {
						t.Errorf("%s: client token %s, want the on-demand fallback's %s", iid, got, want)
					}
				}
			})
		}
	})

	t.Run("an unknown template goes to the DLQ and launches nothing", func(t *testing.T) {
		fp := fleet("fleet-d")
		fp.Template = "x"
		s.Publish(t, fp)
		dlq := bus.DLQName(s.Topology.QueueName(bus.Provisioner, bus.FleetPlanned))
		got := cloudtest.DeadLetters(t, s.SQS, dlq, 20*time.Second, "fleet-d")
		if len(got["fleet-d"]) != 1 {
			t.Fatalf("DLQ holds %v, want fleet-d once", got)
		}
		if r := got["fleet-d"][0].Reason; !strings.Contains(r, `unknown template "x"`) {
			t.Errorf("%s = %q", bus.AttrError, r)
		}
		if n := len(tagged(t, "fleet-d")); n != 0 {
			t.Errorf("%d instances launched for fleet-d", n)
		}
		for id := range got {
			if id != "fleet-d" {
				t.Errorf("%s is in the DLQ too", id)
			}
		}
	})
}

// serve runs the provisioner on the stack until the test ends, with a fast waiter.
func serve(t *testing.T, s *cloudtest.Stack, launchTimeout time.Duration) {
	t.Helper()
	s.Serve(t, func(ctx context.Context) error {
		return Run(ctx, Config{
			Base:           service.Base{Prefix: s.Topology.Prefix, LocalMode: true},
			HostKeySecret:  testSecret,
			WaiterMinDelay: 100 * time.Millisecond,
			WaiterMaxDelay: 100 * time.Millisecond,
			LaunchTimeout:  launchTimeout,
		}, s.Deps(testOps()))
	})
}

// testOps is the default ops config plus the template demo-spot: the demo template asking
// for spot at up to $0.05 an hour, falling back to on demand; the demo-fast profile prices
// m3.medium at $0.02 an hour in the spot market.
func testOps() *opsconfig.Config {
	ops := opsconfig.Default()
	t := ops.Templates["demo"]
	t.Spot = &opsconfig.Spot{MaxPrice: 0.05, Fallback: []string{opsconfig.FallbackOnDemand}}
	ops.Templates["demo-spot"] = t
	c := ops.Profiles["demo-fast"]["m3.medium"]
	c.SpotPrice = 0.02
	ops.Profiles["demo-fast"]["m3.medium"] = c
	return ops
}

func sshDial(endpoint string, login ssh.Signer, hostKey ssh.HostKeyCallback) (*ssh.Client, error) {
	return ssh.Dial("tcp", endpoint, &ssh.ClientConfig{
		User:            "sortie",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(login)},
		HostKeyCallback: hostKey,
		Timeout:         5 * time.Second,
	})
}

// sshRun runs cmd on the instance at endpoint and returns its output.
func sshRun(t *testing.T, endpoint string, login ssh.Signer, hostKey ssh.HostKeyCallback, cmd string) string {
	t.Helper()
	c, err := sshDial(endpoint, login, hostKey)
	if err != nil {
		t.Fatalf("ssh %s: %v", endpoint, err)
	}
	defer c.Close()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	out, err := sess.Output(cmd)
	if err != nil {
		t.Fatalf("ssh %s %q: %v", endpoint, cmd, err)
	}
	return string(out)
}

// TestProvisionerTerminatesFleetThatDoesNotRun: instances that take longer to boot than
// the launch timeout are terminated (nothing leaks), and the plan is dead-lettered with
// the reason.
func TestProvisionerTerminatesFleetThatDoesNotRun(t *testing.T) {
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{BootDelay: 5 * time.Second}))
	ctx := t.Context()
	client := s.EC2
	if _, err := client.CreateKeyPair(ctx, &ec2.CreateKeyPairInput{KeyName: aws.String("sortie-dev")}); err != nil {
		t.Fatal(err)
	}
	serve(t, s, 500*time.Millisecond)
	fp := plan()
	fp.Header = events.NewHeader("slow", "corr-slow", time.Now())
	fp.FleetID = "slow"
	s.Publish(t, fp)

	dlq := bus.DLQName(s.Topology.QueueName(bus.Provisioner, bus.FleetPlanned))
	got := cloudtest.DeadLetters(t, s.SQS, dlq, 20*time.Second, "slow")
	if len(got["slow"]) != 1 {
		t.Fatalf("DLQ holds %v, want the slow fleet's plan", got)
	}
	if r := got["slow"][0].Reason; !strings.Contains(r, "did not reach running within 500ms") {
		t.Errorf("%s = %q", bus.AttrError, r)
	}
	insts := cloudtest.DescribeInstances(t, client, &ec2.DescribeInstancesInput{Filters: []types.Filter{
		{Name: aws.String("tag:sortie:fleet"), Values: []string{"slow"}},
	}})
	for _, in := range insts {
		if live(in.State) {
			t.Errorf("%s is still %s", aws.ToString(in.InstanceId), in.State.Name)
		}
	}
	if n := len(insts); n != 3 {
		t.Errorf("%d instances tagged slow, want the 3 launched (and terminated)", n)
	}
}

// TestConcurrentLaunchesConverge races two launches of the same plan on the local cloud,
// their clocks a second apart so their requests differ (the lease tag): whichever loses
// the race (IdempotentParameterMismatch, or a look-up that finds the winner's instances)
// ends up with the winner's instances.
func TestConcurrentLaunchesConverge(t *testing.T) {
	s := cloudtest.NewStack(t, cloudtest.NewCloud(t, localcloud.Options{}))
	client := NewEC2Client(s.AWS)
	if _, err := client.CreateKeyPair(t.Context(), &ec2.CreateKeyPairInput{KeyName: aws.String("sortie-dev")}); err != nil {
		t.Fatal(err)
	}
	newLauncher := func(skew time.Duration) *launcher {
		return &launcher{
			stack: "sortie", ec2: client, ops: opsconfig.Default(), secret: testSecret,
			now:            func() time.Time { return time.Now().Add(skew) },
			waiterMinDelay: 20 * time.Millisecond, waiterMaxDelay: 50 * time.Millisecond, timeout: 10 * time.Second,
		}
	}
	a, b := newLauncher(0), newLauncher(time.Second)
	ctx := bus.WithLogger(t.Context(), slog.New(slog.DiscardHandler))
	for i := range 5 {
		fp := plan()
		fp.FleetID = fmt.Sprintf("race-%d", i)
		fp.JobID = fp.FleetID
		results := make(chan events.FleetLaunched, 2)
		errs := make(chan error, 2)
		start := make(chan struct{})
		for _, l := range []*launcher{a, b} {
			go func() {
				<-start
				fl, err := l.launch(ctx, fp)
				results <- fl
				errs <- err
			}()
		}
		close(start)
		var ids [][]string
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatalf("%s: %v", fp.FleetID, err)
			}
			var got []string
			for _, in := range (<-results).Instances {
				got = append(got, in.ID)
			}
			slices.Sort(got)
			ids = append(ids, got)
		}
		if !slices.Equal(ids[0], ids[1]) || len(ids[0]) != 3 {
			t.Errorf("%s: the two launches returned %v and %v, want the same 3 instances", fp.FleetID, ids[0], ids[1])
		}
		if n := len(cloudtest.DescribeInstances(t, s.EC2, &ec2.DescribeInstancesInput{Filters: []types.Filter{
			{Name: aws.String("tag:sortie:fleet"), Values: []string{fp.FleetID}},
		}})); n != 3 {
			t.Errorf("%s: %d instances launched, want 3", fp.FleetID, n)
		}
	}
}
