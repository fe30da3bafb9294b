package localcloud

import (
	"encoding/binary"
	"encoding/xml"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/sortie-fleet/sortie/pkg/localcloud/queryform"
)

// The local cloud's network, as a fresh AWS account has it: one default VPC, one default
// subnet per availability zone, the VPC's default security group. Instances launched
// without a subnet land in the default subnet of their zone (the first zone unless
// Placement.AvailabilityZone names another). A subnet or security group id the cloud does not
// know is accepted as given (an ops configuration written for AWS runs unchanged) and
// placed in the default VPC.

// region is the only region of the local cloud.
const region = "us-east-1"

// zones are the availability zones, in order; availabilityZone (the first) is the default.
var zones = []struct{ name, id string }{
	{availabilityZone, "use1-az1"},
	{"us-east-1b", "use1-az2"},
	{"us-east-1c", "use1-az4"},
}

// The default VPC's address space and its subnets' (a /20 per zone, as AWS lays them out).
const (
	defaultVPCCIDR         = "10.0.0.0/16"
	defaultSecurityGroup   = "default"
	defaultGroupDescripton = "default VPC security group"
)

type vpc struct {
	id        string
	cidr      string
	isDefault bool
	tags      map[string]string
}

type subnet struct {
	id, vpcID    string
	zone, zoneID string
	cidr         string
	defaultForAZ bool
	tags         map[string]string
}

// network is the cloud's VPCs, subnets and security groups, guarded by Cloud.mu.
type network struct {
	vpcs    []*vpc
	subnets []*subnet
	groups  []*securityGroup
	nextIP  map[string]int // by subnet CIDR: the host number the next private address gets
}

func newNetwork() *network {
	n := &network{nextIP: map[string]int{}}
	v := &vpc{id: newID("vpc-"), cidr: defaultVPCCIDR, isDefault: true, tags: map[string]string{}}
	n.vpcs = append(n.vpcs, v)
	for i, z := range zones {
		n.subnets = append(n.subnets, &subnet{
			id: newID("subnet-"), vpcID: v.id, zone: z.name, zoneID: z.id,
			cidr: "10.0." + strconv.Itoa(16*i) + ".0/20", defaultForAZ: true, tags: map[string]string{},
		})
	}
	g := newSecurityGroup(v.id, defaultSecurityGroup, defaultGroupDescripton)
	// As on AWS, the default group lets its own members reach each other.
	g.ingress = []rule{{protocol: "-1", fromPort: -1, toPort: -1, groups: []string{g.id}}}
	n.groups = append(n.groups, g)
	return n
}

func (n *network) defaultVPC() *vpc { return n.vpcs[0] }

func (n *network) vpc(id string) *vpc {
	for _, v := range n.vpcs {
		if v.id == id {
			return v
		}
	}
	return nil
}

func (n *network) subnet(id string) *subnet {
	for _, s := range n.subnets {
		if s.id == id {
			return s
		}
	}
	return nil
}

// defaultSubnet returns the default subnet of zone ("" means the first zone), or nil.
func (n *network) defaultSubnet(zone string) *subnet {
	for _, s := range n.subnets {
		if s.defaultForAZ && (zone == "" || s.zone == zone) {
			return s
		}
	}
	return nil
}

// placement is where an instance runs: its subnet, VPC and zone, and the address range
// its private address comes from.
type placement struct {
	subnetID, vpcID, zone, cidr string
}

// nextPrivateIPLocked hands out the subnet's addresses in turn from .10 (never connected
// to; just data), wrapping around when the range is used up.
func (n *network) nextPrivateIPLocked(cidr string) string {
	prefix := netip.MustParsePrefix(cidr)
	size := 1 << (32 - prefix.Bits())
	host := n.nextIP[cidr]%max(size-20, 1) + 10
	n.nextIP[cidr]++
	base := prefix.Addr().As4()
	v := binary.BigEndian.Uint32(base[:]) + uint32(host)
	var out [4]byte
	binary.BigEndian.PutUint32(out[:], v)
	return netip.AddrFrom4(out).String()
}

// placeLocked resolves RunInstances' SubnetId and Placement.AvailabilityZone.
func (n *network) placeLocked(form url.Values) (placement, *apiError) {
	zone := form.Get("Placement.AvailabilityZone")
	if zone != "" && zoneID(zone) == "" {
		return placement{}, invalidParameter("Invalid availability zone: [%s]", zone)
	}
	id := form.Get("SubnetId")
	if id == "" {
		id = form.Get("NetworkInterface.1.SubnetId")
	}
	if id == "" {
		s := n.defaultSubnet(zone)
		return placement{subnetID: s.id, vpcID: s.vpcID, zone: s.zone, cidr: s.cidr}, nil
	}
	if !strings.HasPrefix(id, "subnet-") {
		return placement{}, clientError("InvalidSubnetID.Malformed", "Invalid id: %q (expecting \"subnet-...\")", id)
	}
	if s := n.subnet(id); s != nil {
		return placement{subnetID: s.id, vpcID: s.vpcID, zone: s.zone, cidr: s.cidr}, nil
	}
	s := n.defaultSubnet(zone) // addresses of the zone's default subnet
	return placement{subnetID: id, vpcID: n.defaultVPC().id, zone: s.zone, cidr: s.cidr}, nil
}

func zoneID(name string) string {
	for _, z := range zones {
		if z.name == name {
			return z.id
		}
	}
	return ""
}

// Response documents.

type xmlVPC struct {
	VpcID           string               `xml:"vpcId"`
	OwnerID         string               `xml:"ownerId"`
	State           string               `xml:"state"`
	CidrBlock       string               `xml:"cidrBlock"`
	CidrAssociation []xmlCidrAssociation `xml:"cidrBlockAssociationSet>item"`
	DhcpOptionsID   string               `xml:"dhcpOptionsId"`
	InstanceTenancy string               `xml:"instanceTenancy"`
	IsDefault       bool                 `xml:"isDefault"`
	Tags            []xmlTag             `xml:"tagSet>item,omitempty"`
}

type xmlCidrAssociation struct {
	AssociationID string `xml:"associationId"`
	CidrBlock     string `xml:"cidrBlock"`
	State         struct {
		State string `xml:"state"`
	} `xml:"cidrBlockState"`
}

type describeVpcsResponse struct {
	XMLName xml.Name `xml:"DescribeVpcsResponse"`
	responseMeta
	Vpcs []xmlVPC `xml:"vpcSet>item"`
}

type xmlSubnet struct {
	SubnetID                string   `xml:"subnetId"`
	SubnetArn               string   `xml:"subnetArn"`
	State                   string   `xml:"state"`
	VpcID                   string   `xml:"vpcId"`
	OwnerID                 string   `xml:"ownerId"`
	CidrBlock               string   `xml:"cidrBlock"`
	AvailableIPAddressCount int      `xml:"availableIpAddressCount"`
	AvailabilityZone        string   `xml:"availabilityZone"`
	AvailabilityZoneID      string   `xml:"availabilityZoneId"`
	DefaultForAz            bool     `xml:"defaultForAz"`
	MapPublicIPOnLaunch     bool     `xml:"mapPublicIpOnLaunch"`
	AssignIpv6OnCreation    bool     `xml:"assignIpv6AddressOnCreation"`
	Tags                    []xmlTag `xml:"tagSet>item,omitempty"`
}

type describeSubnetsResponse struct {
	XMLName xml.Name `xml:"DescribeSubnetsResponse"`
	responseMeta
	Subnets []xmlSubnet `xml:"subnetSet>item"`
}

type xmlZone struct {
	ZoneName           string `xml:"zoneName"`
	ZoneID             string `xml:"zoneId"`
	ZoneState          string `xml:"zoneState"`
	RegionName         string `xml:"regionName"`
	ZoneType           string `xml:"zoneType"`
	OptInStatus        string `xml:"optInStatus"`
	NetworkBorderGroup string `xml:"networkBorderGroup"`
	GroupName          string `xml:"groupName"`
}

type describeAvailabilityZonesResponse struct {
	XMLName xml.Name `xml:"DescribeAvailabilityZonesResponse"`
	responseMeta
	Zones []xmlZone `xml:"availabilityZoneInfo>item"`
}

type xmlRegion struct {
	RegionName  string `xml:"regionName"`
	Endpoint    string `xml:"regionEndpoint"`
	OptInStatus string `xml:"optInStatus"`
}

type describeRegionsResponse struct {
	XMLName xml.Name `xml:"DescribeRegionsResponse"`
	responseMeta
	Regions []xmlRegion `xml:"regionInfo>item"`
}

func (v *vpc) render() xmlVPC {
	x := xmlVPC{
		VpcID: v.id, OwnerID: ownerID, State: "available", CidrBlock: v.cidr,
		DhcpOptionsID: "dopt-" + v.id[len("vpc-"):], InstanceTenancy: "default", IsDefault: v.isDefault,
		Tags: renderTags(v.tags),
	}
	a := xmlCidrAssociation{AssociationID: "vpc-cidr-assoc-" + v.id[len("vpc-"):], CidrBlock: v.cidr}
	a.State.State = "associated"
	x.CidrAssociation = []xmlCidrAssociation{a}
	return x
}

func (s *subnet) render() xmlSubnet {
	return xmlSubnet{
		SubnetID: s.id, SubnetArn: "arn:aws:ec2:" + region + ":" + ownerID + ":subnet/" + s.id,
		State: "available", VpcID: s.vpcID, OwnerID: ownerID, CidrBlock: s.cidr, AvailableIPAddressCount: 4091,
		AvailabilityZone: s.zone, AvailabilityZoneID: s.zoneID, DefaultForAz: s.defaultForAZ,
		MapPublicIPOnLaunch: s.defaultForAZ, Tags: renderTags(s.tags),
	}
}

// vpcAttributes are the DescribeVpcs filters besides tag:KEY and tag-key; isDefault is
// the spelling AWS documents alongside is-default (Ansible uses it).
var vpcAttributes = map[string]attribute[*vpc]{
	"vpc-id":                            func(v *vpc) []string { return []string{v.id} },
	"is-default":                        func(v *vpc) []string { return []string{strconv.FormatBool(v.isDefault)} },
	"isDefault":                         func(v *vpc) []string { return []string{strconv.FormatBool(v.isDefault)} },
	"cidr":                              func(v *vpc) []string { return []string{v.cidr} },
	"cidr-block-association.cidr-block": func(v *vpc) []string { return []string{v.cidr} },
	"state":                             func(*vpc) []string { return []string{"available"} },
	"owner-id":                          func(*vpc) []string { return []string{ownerID} },
}

// subnetAttributes are the DescribeSubnets filters besides tag:KEY and tag-key.
var subnetAttributes = map[string]attribute[*subnet]{
	"subnet-id":            func(s *subnet) []string { return []string{s.id} },
	"vpc-id":               func(s *subnet) []string { return []string{s.vpcID} },
	"default-for-az":       func(s *subnet) []string { return []string{strconv.FormatBool(s.defaultForAZ)} },
	"defaultForAz":         func(s *subnet) []string { return []string{strconv.FormatBool(s.defaultForAZ)} },
	"availability-zone":    func(s *subnet) []string { return []string{s.zone} },
	"availabilityZone":     func(s *subnet) []string { return []string{s.zone} },
	"availability-zone-id": func(s *subnet) []string { return []string{s.zoneID} },
	"cidr-block":           func(s *subnet) []string { return []string{s.cidr} },
	"cidrBlock":            func(s *subnet) []string { return []string{s.cidr} },
	"state":                func(*subnet) []string { return []string{"available"} },
	"owner-id":             func(*subnet) []string { return []string{ownerID} },
}

func (c *Cloud) describeVpcs(requestID string, form url.Values) (any, *apiError) {
	match, err := compileFilters(filters(form), vpcAttributes, func(v *vpc) map[string]string { return v.tags })
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	candidates := c.network.vpcs
	if ids := queryform.List(form, "VpcId"); len(ids) > 0 {
		candidates = nil
		for _, id := range ids {
			v := c.network.vpc(id)
			if v == nil {
				return nil, clientError("InvalidVpcID.NotFound", "The vpc ID '%s' does not exist", id)
			}
			candidates = append(candidates, v)
		}
	}
	resp := describeVpcsResponse{responseMeta: meta(requestID)}
	for _, v := range candidates {
		if match(v) {
			resp.Vpcs = append(resp.Vpcs, v.render())
		}
	}
	return resp, nil
}

func (c *Cloud) describeSubnets(requestID string, form url.Values) (any, *apiError) {
	match, err := compileFilters(filters(form), subnetAttributes, func(s *subnet) map[string]string { return s.tags })
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	candidates := c.network.subnets
	if ids := queryform.List(form, "SubnetId"); len(ids) > 0 {
		candidates = nil
		for _, id := range ids {
			s := c.network.subnet(id)
			if s == nil {
				return nil, clientError("InvalidSubnetID.NotFound", "The subnet ID '%s' does not exist", id)
			}
			candidates = append(candidates, s)
		}
	}
	resp := describeSubnetsResponse{responseMeta: meta(requestID)}
	for _, s := range candidates {
		if match(s) {
			resp.Subnets = append(resp.Subnets, s.render())
		}
	}
	return resp, nil
}

var zoneAttributes = map[string]attribute[xmlZone]{
	"zone-name":   func(z xmlZone) []string { return []string{z.ZoneName} },
	"zone-id":     func(z xmlZone) []string { return []string{z.ZoneID} },
	"state":       func(z xmlZone) []string { return []string{z.ZoneState} },
	"region-name": func(z xmlZone) []string { return []string{z.RegionName} },
	"zone-type":   func(z xmlZone) []string { return []string{z.ZoneType} },
}

func (c *Cloud) describeAvailabilityZones(requestID string, form url.Values) (any, *apiError) {
	match, err := compileFilters(filters(form), zoneAttributes, func(xmlZone) map[string]string { return nil })
	if err != nil {
		return nil, err
	}
	names, ids := queryform.List(form, "ZoneName"), queryform.List(form, "ZoneId")
	resp := describeAvailabilityZonesResponse{responseMeta: meta(requestID)}
	for _, z := range zones {
		x := xmlZone{
			ZoneName: z.name, ZoneID: z.id, ZoneState: "available", RegionName: region, ZoneType: "availability-zone",
			OptInStatus: "opt-in-not-required", NetworkBorderGroup: region, GroupName: region,
		}
		if (len(names) > 0 && !slices.Contains(names, z.name)) || (len(ids) > 0 && !slices.Contains(ids, z.id)) || !match(x) {
			continue
		}
		resp.Zones = append(resp.Zones, x)
	}
	for _, name := range names {
		if zoneID(name) == "" {
			return nil, invalidParameter("The zone '%s' does not exist.", name)
		}
	}
	return resp, nil
}

func (c *Cloud) describeRegions(requestID string, form url.Values) (any, *apiError) {
	for _, name := range queryform.List(form, "RegionName") {
		if name != region {
			return nil, clientError("InvalidParameterValue", "Invalid region: %s", name)
		}
	}
	return describeRegionsResponse{
		responseMeta: meta(requestID),
		Regions:      []xmlRegion{{RegionName: region, Endpoint: "ec2." + region + ".amazonaws.com", OptInStatus: "opt-in-not-required"}},
	}, nil
}

// tagsLocked returns the tags of a VPC, subnet or security group.
func (n *network) tagsLocked(id string) (map[string]string, *apiError) {
	switch {
	case strings.HasPrefix(id, "vpc-"):
		if v := n.vpc(id); v != nil {
			return v.tags, nil
		}
		return nil, clientError("InvalidVpcID.NotFound", "The vpc ID '%s' does not exist", id)
	case strings.HasPrefix(id, "subnet-"):
		if s := n.subnet(id); s != nil {
			return s.tags, nil
		}
		return nil, clientError("InvalidSubnetID.NotFound", "The subnet ID '%s' does not exist", id)
	case strings.HasPrefix(id, "sg-"):
		if g := n.group(id); g != nil {
			return g.tags, nil
		}
		return nil, clientError("InvalidGroup.NotFound", "The security group '%s' does not exist", id)
	}
	return nil, clientError("InvalidID", "The ID '%s' is not valid", id)
}

type describeVpcAttributeResponse struct {
	XMLName xml.Name `xml:"DescribeVpcAttributeResponse"`
	responseMeta
	VpcID              string    `xml:"vpcId"`
	EnableDNSSupport   *xmlValue `xml:"enableDnsSupport,omitempty"`
	EnableDNSHostnames *xmlValue `xml:"enableDnsHostnames,omitempty"`
	EnableNAUMetrics   *xmlValue `xml:"enableNetworkAddressUsageMetrics,omitempty"`
}

// describeVpcAttribute answers as for a default VPC: DNS resolution and hostnames on.
func (c *Cloud) describeVpcAttribute(requestID string, form url.Values) (any, *apiError) {
	id, attr := form.Get("VpcId"), form.Get("Attribute")
	if id == "" {
		return nil, missingParameter("VpcId")
	}
	c.mu.Lock()
	v := c.network.vpc(id)
	c.mu.Unlock()
	if v == nil {
		return nil, clientError("InvalidVpcID.NotFound", "The vpc ID '%s' does not exist", id)
	}
	resp := describeVpcAttributeResponse{responseMeta: meta(requestID), VpcID: v.id}
	switch attr {
	case "enableDnsSupport":
		resp.EnableDNSSupport = &xmlValue{"true"}
	case "enableDnsHostnames":
		resp.EnableDNSHostnames = &xmlValue{"true"}
	case "enableNetworkAddressUsageMetrics":
		resp.EnableNAUMetrics = &xmlValue{"false"}
	case "":
		return nil, missingParameter("Attribute")
	default:
		return nil, invalidParameter("Value (%s) for parameter attribute is invalid. Unknown attribute.", attr)
	}
	return resp, nil
}

// classicLinkRetired answers the ClassicLink actions as AWS has since ClassicLink retired
// (clients such as Ansible's ec2_vpc_net_info expect this answer).
func classicLinkRetired(*Cloud, string, url.Values) (any, *apiError) {
	return nil, clientError("UnsupportedOperation", "The functionality you requested is not available in this region.")
}
