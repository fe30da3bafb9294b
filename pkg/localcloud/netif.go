package localcloud

import "strings"

// An instance's primary network interface and root volume, as DescribeInstances shows them
// (tools such as Ansible's ec2_instance read them). Their ids derive from the instance's;
// neither exists on its own (no DescribeNetworkInterfaces, no DescribeVolumes).

type xmlAttachment struct {
	AttachmentID        string `xml:"attachmentId"`
	DeviceIndex         int    `xml:"deviceIndex"`
	Status              string `xml:"status"`
	AttachTime          string `xml:"attachTime"`
	DeleteOnTermination bool   `xml:"deleteOnTermination"`
}

type xmlPrivateAddress struct {
	PrivateIPAddress string `xml:"privateIpAddress"`
	PrivateDNSName   string `xml:"privateDnsName"`
	Primary          bool   `xml:"primary"`
}

type xmlNetworkInterface struct {
	NetworkInterfaceID string              `xml:"networkInterfaceId"`
	SubnetID           string              `xml:"subnetId"`
	VpcID              string              `xml:"vpcId"`
	Description        string              `xml:"description"`
	OwnerID            string              `xml:"ownerId"`
	Status             string              `xml:"status"`
	MacAddress         string              `xml:"macAddress"`
	PrivateIPAddress   string              `xml:"privateIpAddress"`
	PrivateDNSName     string              `xml:"privateDnsName"`
	SourceDestCheck    bool                `xml:"sourceDestCheck"`
	Groups             []xmlGroup          `xml:"groupSet>item"`
	Attachment         xmlAttachment       `xml:"attachment"`
	PrivateAddresses   []xmlPrivateAddress `xml:"privateIpAddressesSet>item"`
	InterfaceType      string              `xml:"interfaceType"`
}

type xmlInstanceEBS struct {
	VolumeID            string `xml:"volumeId"`
	Status              string `xml:"status"`
	AttachTime          string `xml:"attachTime"`
	DeleteOnTermination bool   `xml:"deleteOnTermination"`
}

type xmlInstanceBlockDevice struct {
	DeviceName string         `xml:"deviceName"`
	EBS        xmlInstanceEBS `xml:"ebs"`
}

// attachments renders the interface and root volume of an instance that is not terminated.
func (c *Cloud) attachmentsLocked(inst *instance, x *xmlInstance) {
	if inst.state == stateTerminated {
		return
	}
	suffix := strings.TrimPrefix(inst.id, "i-")
	attached := formatTime(inst.launchTime)
	mac := "02"
	for i := 0; i < 10; i += 2 {
		mac += ":" + suffix[i:i+2]
	}
	x.NetworkInterfaces = []xmlNetworkInterface{{
		NetworkInterfaceID: "eni-" + suffix, SubnetID: inst.subnetID, VpcID: inst.vpcID, OwnerID: ownerID,
		Status: "in-use", MacAddress: mac, PrivateIPAddress: x.PrivateIPAddress, PrivateDNSName: x.PrivateDNSName,
		SourceDestCheck: true, Groups: x.Groups, InterfaceType: "interface",
		Attachment:       xmlAttachment{AttachmentID: "eni-attach-" + suffix, Status: "attached", AttachTime: attached, DeleteOnTermination: true},
		PrivateAddresses: []xmlPrivateAddress{{PrivateIPAddress: x.PrivateIPAddress, PrivateDNSName: x.PrivateDNSName, Primary: true}},
	}}
	x.BlockDevices = []xmlInstanceBlockDevice{{DeviceName: rootDevice, EBS: xmlInstanceEBS{
		VolumeID: "vol-" + suffix, Status: "attached", AttachTime: attached, DeleteOnTermination: true,
	}}}
}
