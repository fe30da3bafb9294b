package localcloud

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

func filter(name string, values ...string) types.Filter {
	return types.Filter{Name: aws.String(name), Values: values}
}

// A fresh local cloud has what a fresh AWS account has: a default VPC, a default subnet per
// zone and the VPC's default security group, found by the filters clients use.
func TestDefaultNetwork(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)

	for _, name := range []string{"isDefault", "is-default"} {
		vpcs, err := client.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: []types.Filter{filter(name, "true")}})
		if err != nil {
			t.Fatal(err)
		}
		if len(vpcs.Vpcs) != 1 || !aws.ToBool(vpcs.Vpcs[0].IsDefault) || aws.ToString(vpcs.Vpcs[0].CidrBlock) != defaultVPCCIDR {
			t.Fatalf("default VPC by %s: %+v", name, vpcs.Vpcs)
		}
	}
	none, err := client.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: []types.Filter{filter("is-default", "false")}})
	if err != nil || len(none.Vpcs) != 0 {
		t.Fatalf("non-default VPCs: %v %+v", err, none)
	}
	vpcID := c.network.defaultVPC().id

	subnets, err := client.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: []types.Filter{
		filter("vpc-id", vpcID), filter("default-for-az", "true"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	var zonesSeen []string
	for _, s := range subnets.Subnets {
		zonesSeen = append(zonesSeen, aws.ToString(s.AvailabilityZone))
		if aws.ToString(s.VpcId) != vpcID || !aws.ToBool(s.DefaultForAz) || s.State != types.SubnetStateAvailable {
			t.Errorf("subnet %+v", s)
		}
	}
	if !slices.Equal(zonesSeen, []string{"us-east-1a", "us-east-1b", "us-east-1c"}) {
		t.Errorf("default subnets in zones %v", zonesSeen)
	}
	one, err := client.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{aws.ToString(subnets.Subnets[1].SubnetId)}})
	if err != nil || len(one.Subnets) != 1 || aws.ToString(one.Subnets[0].AvailabilityZone) != "us-east-1b" {
		t.Fatalf("subnet by id: %v %+v", err, one)
	}
	byID, err := client.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: []types.Filter{filter("subnet-id", aws.ToString(subnets.Subnets[2].SubnetId))}})
	if err != nil || len(byID.Subnets) != 1 {
		t.Fatalf("subnet-id filter: %v %+v", err, byID)
	}
	_, err = client.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{"subnet-0123456789abcdef9"}})
	wantCode(t, err, "InvalidSubnetID.NotFound")

	groups, err := client.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []types.Filter{
		filter("group-name", "default"), filter("vpc-id", vpcID),
	}})
	if err != nil || len(groups.SecurityGroups) != 1 || aws.ToString(groups.SecurityGroups[0].VpcId) != vpcID {
		t.Fatalf("default security group: %v %+v", err, groups)
	}

	dns, err := client.DescribeVpcAttribute(ctx, &ec2.DescribeVpcAttributeInput{VpcId: aws.String(vpcID), Attribute: types.VpcAttributeNameEnableDnsHostnames})
	if err != nil || dns.EnableDnsHostnames == nil || !aws.ToBool(dns.EnableDnsHostnames.Value) {
		t.Fatalf("DescribeVpcAttribute enableDnsHostnames: %v %+v", err, dns)
	}
	_, err = client.DescribeVpcAttribute(ctx, &ec2.DescribeVpcAttributeInput{VpcId: aws.String("vpc-0123456789abcdef0"), Attribute: types.VpcAttributeNameEnableDnsSupport})
	wantCode(t, err, "InvalidVpcID.NotFound")
	_, err = client.DescribeVpcClassicLink(ctx, &ec2.DescribeVpcClassicLinkInput{VpcIds: []string{vpcID}})
	wantCode(t, err, "UnsupportedOperation")

	zonesOut, err := client.DescribeAvailabilityZones(ctx, &ec2.DescribeAvailabilityZonesInput{})
	if err != nil || len(zonesOut.AvailabilityZones) != len(zones) || aws.ToString(zonesOut.AvailabilityZones[0].RegionName) != region {
		t.Fatalf("availability zones: %v %+v", err, zonesOut)
	}
	_, err = client.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: []types.Filter{filter("colour", "blue")}})
	wantCode(t, err, "InvalidParameterValue")
}

// Security groups keep their rules, so an audit can find SSH open to the world.
func TestSecurityGroups(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)

	name := newID("lc-sg-")
	created, err := client.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
		GroupName: aws.String(name), Description: aws.String("ssh from anywhere"),
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeSecurityGroup, Tags: []types.Tag{{Key: aws.String("team"), Value: aws.String("sortie")}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(created.GroupId)
	ssh := types.IpPermission{IpProtocol: aws.String("tcp"), FromPort: aws.Int32(22), ToPort: aws.Int32(22),
		IpRanges: []types.IpRange{{CidrIp: aws.String("0.0.0.0/0"), Description: aws.String("anyone")}}}
	if _, err := client.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{GroupId: aws.String(id), IpPermissions: []types.IpPermission{ssh}}); err != nil {
		t.Fatal(err)
	}

	open, err := client.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{Filters: []types.Filter{
		filter("ip-permission.cidr", "0.0.0.0/0"), filter("ip-permission.from-port", "22"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(open.SecurityGroups) != 1 || aws.ToString(open.SecurityGroups[0].GroupId) != id {
		t.Fatalf("groups with 22 open to the world: %+v", open.SecurityGroups)
	}
	g := open.SecurityGroups[0]
	if v, _ := sgTag(g, "team"); v != "sortie" || aws.ToString(g.VpcId) != c.network.defaultVPC().id ||
		len(g.IpPermissions) != 1 || aws.ToInt32(g.IpPermissions[0].FromPort) != 22 ||
		aws.ToString(g.IpPermissions[0].IpRanges[0].Description) != "anyone" || len(g.IpPermissionsEgress) != 1 {
		t.Errorf("group %+v", g)
	}

	described, err := client.DescribeTags(ctx, &ec2.DescribeTagsInput{Filters: []types.Filter{filter("resource-id", id)}})
	if err != nil || len(described.Tags) != 1 || described.Tags[0].ResourceType != types.ResourceTypeSecurityGroup ||
		aws.ToString(described.Tags[0].Key) != "team" || aws.ToString(described.Tags[0].Value) != "sortie" {
		t.Fatalf("DescribeTags of the group: %v %+v", err, described)
	}

	tests := []struct {
		name string
		call func() error
		code string
	}{
		{"same rule twice", func() error {
			_, err := client.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{GroupId: aws.String(id), IpPermissions: []types.IpPermission{ssh}})
			return err
		}, "InvalidPermission.Duplicate"},
		{"bad port range", func() error {
			_, err := client.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{GroupId: aws.String(id), IpPermissions: []types.IpPermission{{
				IpProtocol: aws.String("tcp"), FromPort: aws.Int32(80), ToPort: aws.Int32(22), IpRanges: []types.IpRange{{CidrIp: aws.String("10.0.0.0/8")}}}}})
			return err
		}, "InvalidParameterValue"},
		{"bad cidr", func() error {
			_, err := client.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{GroupId: aws.String(id), IpPermissions: []types.IpPermission{{
				IpProtocol: aws.String("tcp"), FromPort: aws.Int32(80), ToPort: aws.Int32(80), IpRanges: []types.IpRange{{CidrIp: aws.String("10.0.0.0/33")}}}}})
			return err
		}, "InvalidParameterValue"},
		{"same name twice", func() error {
			_, err := client.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: aws.String(name), Description: aws.String("again")})
			return err
		}, "InvalidGroup.Duplicate"},
		{"reserved name", func() error {
			_, err := client.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: aws.String("default"), Description: aws.String("x")})
			return err
		}, "InvalidParameterValue"},
		{"unknown vpc", func() error {
			_, err := client.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: aws.String("x"), Description: aws.String("x"), VpcId: aws.String("vpc-0123456789abcdef0")})
			return err
		}, "InvalidVpcID.NotFound"},
		{"unknown group", func() error {
			_, err := client.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{GroupIds: []string{"sg-0123456789abcdef9"}})
			return err
		}, "InvalidGroup.NotFound"},
		{"the default group", func() error {
			_, err := client.DeleteSecurityGroup(ctx, &ec2.DeleteSecurityGroupInput{GroupName: aws.String("default")})
			return err
		}, "CannotDelete"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantCode(t, tt.call(), tt.code) })
	}

	// A group in use by an instance cannot go; once the instance is gone it can.
	in := runInput(launch{})
	in.SecurityGroupIds = []string{id}
	out, err := client.RunInstances(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	inst := out.Instances[0]
	if len(inst.SecurityGroups) != 1 || aws.ToString(inst.SecurityGroups[0].GroupName) != name {
		t.Errorf("instance groups %+v", inst.SecurityGroups)
	}
	_, err = client.DeleteSecurityGroup(ctx, &ec2.DeleteSecurityGroupInput{GroupId: aws.String(id)})
	wantCode(t, err, "DependencyViolation")
	if _, err := client.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{aws.ToString(inst.InstanceId)}}); err != nil {
		t.Fatal(err)
	}
	waitTerminated(t, client, []string{aws.ToString(inst.InstanceId)})

	if _, err := client.RevokeSecurityGroupIngress(ctx, &ec2.RevokeSecurityGroupIngressInput{GroupId: aws.String(id), IpPermissions: []types.IpPermission{ssh}}); err != nil {
		t.Fatal(err)
	}
	after, err := client.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{GroupIds: []string{id}})
	if err != nil || len(after.SecurityGroups[0].IpPermissions) != 0 {
		t.Fatalf("after revoke: %v %+v", err, after)
	}
	if _, err := client.DeleteSecurityGroup(ctx, &ec2.DeleteSecurityGroupInput{GroupId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	_, err = client.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{GroupIds: []string{id}})
	wantCode(t, err, "InvalidGroup.NotFound")
}

// Instances land in a subnet of the default VPC with the default security group unless
// told otherwise; subnet ids the cloud does not know are kept as given.
func TestInstancePlacement(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)
	vpcID := c.network.defaultVPC().id
	zoneB := c.network.defaultSubnet("us-east-1b")

	tests := []struct {
		name               string
		edit               func(*ec2.RunInstancesInput)
		subnet, zone, code string
	}{
		{"default", func(*ec2.RunInstancesInput) {}, c.network.defaultSubnet("").id, "us-east-1a", ""},
		{"zone", func(in *ec2.RunInstancesInput) {
			in.Placement = &types.Placement{AvailabilityZone: aws.String("us-east-1b")}
		}, zoneB.id, "us-east-1b", ""},
		{"known subnet", func(in *ec2.RunInstancesInput) { in.SubnetId = aws.String(zoneB.id) }, zoneB.id, "us-east-1b", ""},
		{"subnet from an ops config", func(in *ec2.RunInstancesInput) { in.SubnetId = aws.String("subnet-0123456789abcdef0") }, "subnet-0123456789abcdef0", "us-east-1a", ""},
		{"malformed subnet", func(in *ec2.RunInstancesInput) { in.SubnetId = aws.String("net-1") }, "", "", "InvalidSubnetID.Malformed"},
		{"unknown zone", func(in *ec2.RunInstancesInput) {
			in.Placement = &types.Placement{AvailabilityZone: aws.String("eu-west-9z")}
		}, "", "", "InvalidParameterValue"},
		{"unknown group name", func(in *ec2.RunInstancesInput) { in.SecurityGroups = []string{"no-such-group"} }, "", "", "InvalidGroup.NotFound"},
		{"malformed group id", func(in *ec2.RunInstancesInput) { in.SecurityGroupIds = []string{"group-1"} }, "", "", "InvalidGroupId.Malformed"},
	}
	launched := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := runInput(launch{})
			tt.edit(in)
			out, err := client.RunInstances(ctx, in)
			if tt.code != "" {
				wantCode(t, err, tt.code)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			launched++
			inst := describe(t, client, &ec2.DescribeInstancesInput{InstanceIds: []string{aws.ToString(out.Instances[0].InstanceId)}})[0]
			if aws.ToString(inst.SubnetId) != tt.subnet || aws.ToString(inst.VpcId) != vpcID || aws.ToString(inst.Placement.AvailabilityZone) != tt.zone ||
				len(inst.SecurityGroups) != 1 || aws.ToString(inst.SecurityGroups[0].GroupName) != "default" {
				t.Errorf("instance in subnet %s, vpc %s, zone %s, groups %+v", aws.ToString(inst.SubnetId), aws.ToString(inst.VpcId),
					aws.ToString(inst.Placement.AvailabilityZone), inst.SecurityGroups)
			}
			if ip, err := netip.ParseAddr(aws.ToString(inst.PrivateIpAddress)); err != nil || !netip.MustParsePrefix(c.network.defaultSubnet(tt.zone).cidr).Contains(ip) {
				t.Errorf("private address %s outside the %s subnet %s", aws.ToString(inst.PrivateIpAddress), tt.zone, c.network.defaultSubnet(tt.zone).cidr)
			}
			if len(inst.NetworkInterfaces) != 1 || aws.ToString(inst.NetworkInterfaces[0].SubnetId) != tt.subnet ||
				aws.ToString(inst.NetworkInterfaces[0].PrivateIpAddress) != aws.ToString(inst.PrivateIpAddress) ||
				len(inst.BlockDeviceMappings) != 1 || aws.ToString(inst.BlockDeviceMappings[0].DeviceName) != rootDevice {
				t.Errorf("interfaces %+v, block devices %+v", inst.NetworkInterfaces, inst.BlockDeviceMappings)
			}
			byVPC := describe(t, client, &ec2.DescribeInstancesInput{Filters: []types.Filter{filter("vpc-id", vpcID), filter("availability-zone", tt.zone), filter("instance-id", aws.ToString(inst.InstanceId))}})
			if len(byVPC) != 1 {
				t.Errorf("vpc-id and availability-zone filters found %d", len(byVPC))
			}
		})
	}
	// A refused launch leaves nothing behind.
	if all := describe(t, client, &ec2.DescribeInstancesInput{}); len(all) != launched {
		t.Errorf("%d instances exist, %d launches succeeded", len(all), launched)
	}
}

func TestImagesStatusAttributes(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	client, _ := ec2Client(t, c)
	ctx := ctxT(t)

	asked := "ami-0fedcba9876543210"
	imgs, err := client.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{asked}})
	if err != nil || len(imgs.Images) != 1 || aws.ToString(imgs.Images[0].ImageId) != asked || imgs.Images[0].State != types.ImageStateAvailable ||
		aws.ToString(imgs.Images[0].RootDeviceName) != rootDevice || len(imgs.Images[0].BlockDeviceMappings) != 1 {
		t.Fatalf("DescribeImages %s: %v %+v", asked, err, imgs)
	}
	all, err := client.DescribeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"self"}})
	if err != nil || !slices.ContainsFunc(all.Images, func(i types.Image) bool { return aws.ToString(i.ImageId) == testImage }) {
		t.Fatalf("the default template's AMI is not listed: %v %+v", err, all)
	}
	_, err = client.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{"image-1"}})
	wantCode(t, err, "InvalidAMIID.Malformed")

	ids := run(t, client, launch{userData: "#!/bin/sh\necho hi\n", instanceType: types.InstanceTypeC5Large})
	waitRunning(t, client, ids)
	status, err := client.DescribeInstanceStatus(ctx, &ec2.DescribeInstanceStatusInput{InstanceIds: ids})
	if err != nil || len(status.InstanceStatuses) != 1 || status.InstanceStatuses[0].InstanceStatus.Status != types.SummaryStatusOk ||
		status.InstanceStatuses[0].SystemStatus.Status != types.SummaryStatusOk || status.InstanceStatuses[0].InstanceState.Name != types.InstanceStateNameRunning {
		t.Fatalf("DescribeInstanceStatus: %v %+v", err, status)
	}
	w := ec2.NewInstanceStatusOkWaiter(client)
	if err := w.Wait(ctx, &ec2.DescribeInstanceStatusInput{InstanceIds: ids}, 10*time.Second); err != nil {
		t.Fatalf("instance-status-ok waiter: %v", err)
	}

	ud, err := client.DescribeInstanceAttribute(ctx, &ec2.DescribeInstanceAttributeInput{InstanceId: aws.String(ids[0]), Attribute: types.InstanceAttributeNameUserData})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := base64.StdEncoding.DecodeString(aws.ToString(ud.UserData.Value)); string(b) != "#!/bin/sh\necho hi\n" {
		t.Errorf("userData = %q", b)
	}
	it, err := client.DescribeInstanceAttribute(ctx, &ec2.DescribeInstanceAttributeInput{InstanceId: aws.String(ids[0]), Attribute: types.InstanceAttributeNameInstanceType})
	if err != nil || aws.ToString(it.InstanceType.Value) != "c5.large" {
		t.Fatalf("instanceType: %v %+v", err, it)
	}
	_, err = client.DescribeInstanceAttribute(ctx, &ec2.DescribeInstanceAttributeInput{InstanceId: aws.String(ids[0]), Attribute: "colour"})
	wantCode(t, err, "InvalidParameterValue")

	if _, err := client.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: ids}); err != nil {
		t.Fatal(err)
	}
	waitTerminated(t, client, ids)
	if dead := describe(t, client, &ec2.DescribeInstancesInput{InstanceIds: ids})[0]; len(dead.NetworkInterfaces) != 0 || len(dead.BlockDeviceMappings) != 0 {
		t.Errorf("a terminated instance keeps interfaces %+v and volumes %+v", dead.NetworkInterfaces, dead.BlockDeviceMappings)
	}
	gone, err := client.DescribeInstanceStatus(ctx, &ec2.DescribeInstanceStatusInput{InstanceIds: ids})
	if err != nil || len(gone.InstanceStatuses) != 0 {
		t.Errorf("status of a terminated instance without IncludeAllInstances: %v %+v", err, gone)
	}
	withAll, err := client.DescribeInstanceStatus(ctx, &ec2.DescribeInstanceStatusInput{InstanceIds: ids, IncludeAllInstances: aws.Bool(true)})
	if err != nil || len(withAll.InstanceStatuses) != 1 || withAll.InstanceStatuses[0].InstanceState.Name != types.InstanceStateNameTerminated {
		t.Errorf("status with IncludeAllInstances: %v %+v", err, withAll)
	}
}

// An EC2 action the local cloud does not implement is answered in EC2's error shape.
func TestInvalidActionDocument(t *testing.T) {
	t.Parallel()
	c := newCloud(t, Options{})
	form := url.Values{"Action": {"AllocateAddress"}, "Version": {ec2Version}}
	resp, err := http.Post(c.URL(), "application/x-www-form-urlencoded", bytes.NewBufferString(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var doc struct {
		XMLName xml.Name `xml:"Response"`
		Errors  []struct {
			Code    string `xml:"Code"`
			Message string `xml:"Message"`
		} `xml:"Errors>Error"`
		RequestID string `xml:"RequestID"`
	}
	if err := xml.Unmarshal(body, &doc); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	if resp.StatusCode != http.StatusBadRequest || len(doc.Errors) != 1 || doc.Errors[0].Code != "InvalidAction" || doc.RequestID == "" {
		t.Errorf("status %d, body %s", resp.StatusCode, body)
	}
}

func TestNextPrivateIP(t *testing.T) {
	n := newNetwork()
	cidr := n.defaultSubnet("us-east-1b").cidr
	first := n.nextPrivateIPLocked(cidr)
	second := n.nextPrivateIPLocked(cidr)
	if first != "10.0.16.10" || second != "10.0.16.11" {
		t.Fatalf("first addresses %s, %s", first, second)
	}
	for range 4096 - 20 - 2 {
		n.nextPrivateIPLocked(cidr)
	}
	if again := n.nextPrivateIPLocked(cidr); again != first {
		t.Errorf("after the range is used up: %s, want %s again", again, first)
	}
	if other := n.nextPrivateIPLocked(n.defaultSubnet("us-east-1a").cidr); other != "10.0.0.10" {
		t.Errorf("another subnet starts at %s", other)
	}
}
