package localcloud

import (
	"encoding/xml"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/sortie-fleet/sortie/pkg/localcloud/queryform"
)

// Security groups keep their rules, as given, so that an audit can find (say) port 22 open
// to 0.0.0.0/0; nothing enforces them (instances listen on 127.0.0.1).

type securityGroup struct {
	id, name, description, vpcID string
	ingress, egress              []rule
	tags                         map[string]string
}

// rule is one IP permission: a protocol ("-1" is all), a port range (-1 when the protocol
// has none) and its sources or destinations.
type rule struct {
	protocol         string
	fromPort, toPort int
	cidrs            []cidrRange
	cidrsV6          []cidrRange
	groups           []string // group ids
}

type cidrRange struct{ cidr, description string }

func newSecurityGroup(vpcID, name, description string) *securityGroup {
	return &securityGroup{
		id: newID("sg-"), name: name, description: description, vpcID: vpcID,
		egress: []rule{{protocol: "-1", fromPort: -1, toPort: -1, cidrs: []cidrRange{{cidr: "0.0.0.0/0"}}}},
		tags:   map[string]string{},
	}
}

func (n *network) group(id string) *securityGroup {
	for _, g := range n.groups {
		if g.id == id {
			return g
		}
	}
	return nil
}

func (n *network) groupByName(vpcID, name string) *securityGroup {
	for _, g := range n.groups {
		if g.vpcID == vpcID && g.name == name {
			return g
		}
	}
	return nil
}

// groupsLocked resolves RunInstances' SecurityGroupId.N and SecurityGroup.N (names, in the
// instance's VPC) to ids; no group at all means the VPC's default group. Unknown ids are
// kept as given (see network).
func (n *network) groupsLocked(form url.Values, vpcID string) ([]string, *apiError) {
	ids := queryform.List(form, "SecurityGroupId")
	if len(ids) == 0 {
		ids = queryform.List(form, "NetworkInterface.1.SecurityGroupId")
	}
	for _, id := range ids {
		if !strings.HasPrefix(id, "sg-") {
			return nil, clientError("InvalidGroupId.Malformed", "Invalid id: %q (expecting \"sg-...\")", id)
		}
	}
	for _, name := range queryform.List(form, "SecurityGroup") {
		g := n.groupByName(vpcID, name)
		if g == nil {
			return nil, clientError("InvalidGroup.NotFound", "The security group '%s' does not exist in VPC '%s'", name, vpcID)
		}
		ids = append(ids, g.id)
	}
	if len(ids) == 0 {
		if g := n.groupByName(vpcID, defaultSecurityGroup); g != nil {
			ids = []string{g.id}
		}
	}
	return ids, nil
}

// xmlGroupNames renders an instance's groups with the names the cloud knows.
func (n *network) renderGroups(ids []string) []xmlGroup {
	out := make([]xmlGroup, 0, len(ids))
	for _, id := range ids {
		x := xmlGroup{GroupID: id}
		if g := n.group(id); g != nil {
			x.GroupName = g.name
		}
		out = append(out, x)
	}
	return out
}

// Response documents.

type xmlIPRange struct {
	CidrIP      string `xml:"cidrIp"`
	Description string `xml:"description,omitempty"`
}

type xmlIPv6Range struct {
	CidrIPv6    string `xml:"cidrIpv6"`
	Description string `xml:"description,omitempty"`
}

type xmlGroupPair struct {
	UserID  string `xml:"userId"`
	GroupID string `xml:"groupId"`
}

type xmlPermission struct {
	IPProtocol string         `xml:"ipProtocol"`
	FromPort   *int           `xml:"fromPort,omitempty"`
	ToPort     *int           `xml:"toPort,omitempty"`
	Groups     []xmlGroupPair `xml:"groups>item"`
	IPRanges   []xmlIPRange   `xml:"ipRanges>item"`
	IPv6Ranges []xmlIPv6Range `xml:"ipv6Ranges>item"`
	PrefixList []struct{}     `xml:"prefixListIds>item"`
}

type xmlSecurityGroup struct {
	OwnerID     string          `xml:"ownerId"`
	GroupID     string          `xml:"groupId"`
	GroupName   string          `xml:"groupName"`
	Description string          `xml:"groupDescription"`
	VpcID       string          `xml:"vpcId"`
	Ingress     []xmlPermission `xml:"ipPermissions>item"`
	Egress      []xmlPermission `xml:"ipPermissionsEgress>item"`
	Tags        []xmlTag        `xml:"tagSet>item,omitempty"`
}

type describeSecurityGroupsResponse struct {
	XMLName xml.Name `xml:"DescribeSecurityGroupsResponse"`
	responseMeta
	Groups []xmlSecurityGroup `xml:"securityGroupInfo>item"`
}

type createSecurityGroupResponse struct {
	XMLName xml.Name `xml:"CreateSecurityGroupResponse"`
	responseMeta
	Return  bool     `xml:"return"`
	GroupID string   `xml:"groupId"`
	Tags    []xmlTag `xml:"tagSet>item,omitempty"`
}

func (r rule) render() xmlPermission {
	x := xmlPermission{IPProtocol: r.protocol}
	if r.protocol != "-1" {
		from, to := r.fromPort, r.toPort
		x.FromPort, x.ToPort = &from, &to
	}
	for _, c := range r.cidrs {
		x.IPRanges = append(x.IPRanges, xmlIPRange{CidrIP: c.cidr, Description: c.description})
	}
	for _, c := range r.cidrsV6 {
		x.IPv6Ranges = append(x.IPv6Ranges, xmlIPv6Range{CidrIPv6: c.cidr, Description: c.description})
	}
	for _, g := range r.groups {
		x.Groups = append(x.Groups, xmlGroupPair{UserID: ownerID, GroupID: g})
	}
	return x
}

func (g *securityGroup) render() xmlSecurityGroup {
	x := xmlSecurityGroup{
		OwnerID: ownerID, GroupID: g.id, GroupName: g.name, Description: g.description, VpcID: g.vpcID,
		Tags: renderTags(g.tags),
	}
	for _, r := range g.ingress {
		x.Ingress = append(x.Ingress, r.render())
	}
	for _, r := range g.egress {
		x.Egress = append(x.Egress, r.render())
	}
	return x
}

// ruleValues returns what a rule's ip-permission.* filter compares against.
func ruleValues(rules []rule, get func(rule) []string) []string {
	var out []string
	for _, r := range rules {
		out = append(out, get(r)...)
	}
	return out
}

func permissionFilters(prefix string, pick func(*securityGroup) []rule) map[string]attribute[*securityGroup] {
	return map[string]attribute[*securityGroup]{
		prefix + ".protocol": func(g *securityGroup) []string {
			return ruleValues(pick(g), func(r rule) []string { return []string{r.protocol} })
		},
		prefix + ".from-port": func(g *securityGroup) []string {
			return ruleValues(pick(g), func(r rule) []string { return []string{strconv.Itoa(r.fromPort)} })
		},
		prefix + ".to-port": func(g *securityGroup) []string {
			return ruleValues(pick(g), func(r rule) []string { return []string{strconv.Itoa(r.toPort)} })
		},
		prefix + ".cidr": func(g *securityGroup) []string {
			return ruleValues(pick(g), func(r rule) []string {
				var out []string
				for _, c := range r.cidrs {
					out = append(out, c.cidr)
				}
				return out
			})
		},
		prefix + ".ipv6-cidr": func(g *securityGroup) []string {
			return ruleValues(pick(g), func(r rule) []string {
				var out []string
				for _, c := range r.cidrsV6 {
					out = append(out, c.cidr)
				}
				return out
			})
		},
		prefix + ".group-id": func(g *securityGroup) []string {
			return ruleValues(pick(g), func(r rule) []string { return r.groups })
		},
	}
}

// securityGroupAttributes are the DescribeSecurityGroups filters besides tag:KEY and tag-key.
var securityGroupAttributes = func() map[string]attribute[*securityGroup] {
	m := map[string]attribute[*securityGroup]{
		"group-id":    func(g *securityGroup) []string { return []string{g.id} },
		"group-name":  func(g *securityGroup) []string { return []string{g.name} },
		"description": func(g *securityGroup) []string { return []string{g.description} },
		"vpc-id":      func(g *securityGroup) []string { return []string{g.vpcID} },
		"owner-id":    func(*securityGroup) []string { return []string{ownerID} },
	}
	for k, v := range permissionFilters("ip-permission", func(g *securityGroup) []rule { return g.ingress }) {
		m[k] = v
	}
	for k, v := range permissionFilters("egress.ip-permission", func(g *securityGroup) []rule { return g.egress }) {
		m[k] = v
	}
	return m
}()

func (c *Cloud) describeSecurityGroups(requestID string, form url.Values) (any, *apiError) {
	match, err := compileFilters(filters(form), securityGroupAttributes, func(g *securityGroup) map[string]string { return g.tags })
	if err != nil {
		return nil, err
	}
	ids, names := queryform.List(form, "GroupId"), queryform.List(form, "GroupName")
	c.mu.Lock()
	defer c.mu.Unlock()
	candidates := c.network.groups
	if len(ids) > 0 || len(names) > 0 {
		candidates = nil
		for _, id := range ids {
			g := c.network.group(id)
			if g == nil {
				return nil, clientError("InvalidGroup.NotFound", "The security group '%s' does not exist", id)
			}
			candidates = append(candidates, g)
		}
		for _, name := range names {
			// GroupName names groups of the default VPC, as on AWS.
			g := c.network.groupByName(c.network.defaultVPC().id, name)
			if g == nil {
				return nil, clientError("InvalidGroup.NotFound", "The security group '%s' does not exist in default VPC '%s'", name, c.network.defaultVPC().id)
			}
			candidates = append(candidates, g)
		}
	}
	resp := describeSecurityGroupsResponse{responseMeta: meta(requestID)}
	for _, g := range candidates {
		if match(g) {
			resp.Groups = append(resp.Groups, g.render())
		}
	}
	return resp, nil
}

func (c *Cloud) createSecurityGroup(requestID string, form url.Values) (any, *apiError) {
	name, description := form.Get("GroupName"), form.Get("GroupDescription")
	switch {
	case name == "":
		return nil, missingParameter("GroupName")
	case description == "":
		return nil, missingParameter("GroupDescription")
	case len(name) > 255 || len(description) > 255 || !isASCII(name) || !isASCII(description):
		return nil, invalidParameter("Group name and description are limited to 255 ASCII characters.")
	case strings.HasPrefix(name, "sg-"):
		return nil, invalidParameter("Group names may not be in the format sg-*.")
	case name == defaultSecurityGroup:
		return nil, invalidParameter("Cannot use reserved security group name: %s", name)
	}
	tags, err := tagSpecifications(form, "security-group")
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	vpcID := form.Get("VpcId")
	if vpcID == "" {
		vpcID = c.network.defaultVPC().id
	} else if c.network.vpc(vpcID) == nil {
		return nil, clientError("InvalidVpcID.NotFound", "The vpc ID '%s' does not exist", vpcID)
	}
	if c.network.groupByName(vpcID, name) != nil {
		return nil, clientError("InvalidGroup.Duplicate", "The security group '%s' already exists for VPC '%s'", name, vpcID)
	}
	g := newSecurityGroup(vpcID, name, description)
	for k, v := range tags {
		g.tags[k] = v
	}
	c.network.groups = append(c.network.groups, g)
	return createSecurityGroupResponse{responseMeta: meta(requestID), Return: true, GroupID: g.id, Tags: renderTags(g.tags)}, nil
}

// groupFromFormLocked finds the group of GroupId or GroupName (a default-VPC group).
func (c *Cloud) groupFromFormLocked(form url.Values) (*securityGroup, *apiError) {
	id, name := form.Get("GroupId"), form.Get("GroupName")
	switch {
	case id != "":
		if g := c.network.group(id); g != nil {
			return g, nil
		}
		if !strings.HasPrefix(id, "sg-") {
			return nil, clientError("InvalidGroupId.Malformed", "Invalid id: %q (expecting \"sg-...\")", id)
		}
		return nil, clientError("InvalidGroup.NotFound", "The security group '%s' does not exist", id)
	case name != "":
		if g := c.network.groupByName(c.network.defaultVPC().id, name); g != nil {
			return g, nil
		}
		return nil, clientError("InvalidGroup.NotFound", "The security group '%s' does not exist in default VPC '%s'", name, c.network.defaultVPC().id)
	}
	return nil, missingParameter("GroupId")
}

func (c *Cloud) deleteSecurityGroup(requestID string, form url.Values) (any, *apiError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g, err := c.groupFromFormLocked(form)
	if err != nil {
		return nil, err
	}
	if g.name == defaultSecurityGroup {
		return nil, clientError("CannotDelete", "the specified group: \"%s\" name: \"default\" cannot be deleted by a user", g.id)
	}
	for _, inst := range c.order {
		if inst.state != stateTerminated && slices.Contains(inst.groups, g.id) {
			return nil, clientError("DependencyViolation", "resource %s has a dependent object", g.id)
		}
	}
	for _, other := range c.network.groups {
		for _, r := range slices.Concat(other.ingress, other.egress) {
			if other != g && slices.Contains(r.groups, g.id) {
				return nil, clientError("DependencyViolation", "resource %s has a dependent object", g.id)
			}
		}
	}
	c.network.groups = slices.DeleteFunc(c.network.groups, func(x *securityGroup) bool { return x == g })
	return returnResponse{XMLName: xmlName("DeleteSecurityGroupResponse"), responseMeta: meta(requestID), Return: true}, nil
}

// permissionsFromForm reads IpPermissions.N (and the older top-level IpProtocol, FromPort,
// ToPort, CidrIp a rule may be given with).
func (c *Cloud) permissionsFromFormLocked(form url.Values) ([]rule, *apiError) {
	var out []rule
	if p := form.Get("IpProtocol"); p != "" {
		r, err := newRule(p, form.Get("FromPort"), form.Get("ToPort"))
		if err != nil {
			return nil, err
		}
		if cidr := form.Get("CidrIp"); cidr != "" {
			if _, perr := netip.ParsePrefix(cidr); perr != nil {
				return nil, invalidParameter("CIDR block %s is malformed", cidr)
			}
			r.cidrs = append(r.cidrs, cidrRange{cidr: cidr})
		}
		if g := form.Get("SourceSecurityGroupName"); g != "" {
			sg := c.network.groupByName(c.network.defaultVPC().id, g)
			if sg == nil {
				return nil, clientError("InvalidGroup.NotFound", "The security group '%s' does not exist", g)
			}
			r.groups = append(r.groups, sg.id)
		}
		out = append(out, r)
	}
	for _, n := range queryform.Indices(form, "IpPermissions") {
		base := "IpPermissions." + strconv.Itoa(n)
		r, err := newRule(form.Get(base+".IpProtocol"), form.Get(base+".FromPort"), form.Get(base+".ToPort"))
		if err != nil {
			return nil, err
		}
		for _, m := range queryform.Indices(form, base+".IpRanges") {
			item := base + ".IpRanges." + strconv.Itoa(m)
			cidr := form.Get(item + ".CidrIp")
			if p, perr := netip.ParsePrefix(cidr); perr != nil || !p.Addr().Is4() {
				return nil, invalidParameter("CIDR block %s is malformed", cidr)
			}
			r.cidrs = append(r.cidrs, cidrRange{cidr: cidr, description: form.Get(item + ".Description")})
		}
		for _, m := range queryform.Indices(form, base+".Ipv6Ranges") {
			item := base + ".Ipv6Ranges." + strconv.Itoa(m)
			cidr := form.Get(item + ".CidrIpv6")
			if p, perr := netip.ParsePrefix(cidr); perr != nil || !p.Addr().Is6() {
				return nil, invalidParameter("CIDR block %s is malformed", cidr)
			}
			r.cidrsV6 = append(r.cidrsV6, cidrRange{cidr: cidr, description: form.Get(item + ".Description")})
		}
		for _, m := range queryform.Indices(form, base+".Groups") {
			item := base + ".Groups." + strconv.Itoa(m)
			id := form.Get(item + ".GroupId")
			if id == "" {
				if g := c.network.groupByName(c.network.defaultVPC().id, form.Get(item+".GroupName")); g != nil {
					id = g.id
				}
			}
			if c.network.group(id) == nil {
				return nil, clientError("InvalidGroup.NotFound", "The security group '%s' does not exist", id)
			}
			r.groups = append(r.groups, id)
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		return nil, missingParameter("IpPermissions")
	}
	return out, nil
}

// newRule validates a protocol and its port range: tcp/udp need 0 ≤ from ≤ to ≤ 65535,
// icmp takes a type and code, -1 (all) takes none.
func newRule(protocol, from, to string) (rule, *apiError) {
	switch strings.ToLower(protocol) {
	case "-1", "all":
		return rule{protocol: "-1", fromPort: -1, toPort: -1}, nil
	case "tcp", "6", "udp", "17":
		p := map[string]string{"6": "tcp", "17": "udp"}[protocol]
		if p == "" {
			p = strings.ToLower(protocol)
		}
		f, ferr := strconv.Atoi(from)
		t, terr := strconv.Atoi(to)
		if ferr != nil || terr != nil || f < 0 || t > 65535 || f > t {
			return rule{}, invalidParameter("Invalid port range: from %q to %q for protocol %s", from, to, p)
		}
		return rule{protocol: p, fromPort: f, toPort: t}, nil
	case "icmp", "1":
		f, ferr := strconv.Atoi(from)
		t, terr := strconv.Atoi(to)
		if ferr != nil || terr != nil {
			return rule{}, invalidParameter("Invalid ICMP type or code: %q %q", from, to)
		}
		return rule{protocol: "icmp", fromPort: f, toPort: t}, nil
	case "":
		return rule{}, missingParameter("IpProtocol")
	}
	return rule{}, clientError("InvalidPermission.Malformed", "Unsupported IP protocol %q", protocol)
}

// sameTarget reports whether two rules cover the same protocol and ports.
func sameTarget(a, b rule) bool {
	return a.protocol == b.protocol && a.fromPort == b.fromPort && a.toPort == b.toPort
}

func (c *Cloud) authorizeIngress(requestID string, form url.Values) (any, *apiError) {
	return c.changeRules(requestID, form, "AuthorizeSecurityGroupIngressResponse", true, func(g *securityGroup) *[]rule { return &g.ingress })
}

func (c *Cloud) authorizeEgress(requestID string, form url.Values) (any, *apiError) {
	return c.changeRules(requestID, form, "AuthorizeSecurityGroupEgressResponse", true, func(g *securityGroup) *[]rule { return &g.egress })
}

func (c *Cloud) revokeIngress(requestID string, form url.Values) (any, *apiError) {
	return c.changeRules(requestID, form, "RevokeSecurityGroupIngressResponse", false, func(g *securityGroup) *[]rule { return &g.ingress })
}

func (c *Cloud) revokeEgress(requestID string, form url.Values) (any, *apiError) {
	return c.changeRules(requestID, form, "RevokeSecurityGroupEgressResponse", false, func(g *securityGroup) *[]rule { return &g.egress })
}

// changeRules adds (authorize) or removes (revoke) every source of every permission given:
// adding one already there is InvalidPermission.Duplicate, removing one that is not there
// InvalidPermission.NotFound, and either leaves the group unchanged.
func (c *Cloud) changeRules(requestID string, form url.Values, response string, add bool, which func(*securityGroup) *[]rule) (any, *apiError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g, err := c.groupFromFormLocked(form)
	if err != nil {
		return nil, err
	}
	perms, err := c.permissionsFromFormLocked(form)
	if err != nil {
		return nil, err
	}
	rules := slices.Clone(*which(g))
	for _, p := range perms {
		i := slices.IndexFunc(rules, func(r rule) bool { return sameTarget(r, p) })
		if add {
			if i < 0 {
				rules = append(rules, rule{protocol: p.protocol, fromPort: p.fromPort, toPort: p.toPort})
				i = len(rules) - 1
			}
			r := &rules[i]
			r.cidrs = slices.Clone(r.cidrs)
			r.cidrsV6 = slices.Clone(r.cidrsV6)
			r.groups = slices.Clone(r.groups)
			for _, cr := range p.cidrs {
				if slices.ContainsFunc(r.cidrs, func(x cidrRange) bool { return x.cidr == cr.cidr }) {
					return nil, clientError("InvalidPermission.Duplicate", "the specified rule \"peer: %s, %s, from port: %d, to port: %d, ALLOW\" already exists", cr.cidr, p.protocol, p.fromPort, p.toPort)
				}
				r.cidrs = append(r.cidrs, cr)
			}
			for _, cr := range p.cidrsV6 {
				if slices.ContainsFunc(r.cidrsV6, func(x cidrRange) bool { return x.cidr == cr.cidr }) {
					return nil, clientError("InvalidPermission.Duplicate", "the specified rule \"peer: %s, %s, from port: %d, to port: %d, ALLOW\" already exists", cr.cidr, p.protocol, p.fromPort, p.toPort)
				}
				r.cidrsV6 = append(r.cidrsV6, cr)
			}
			for _, id := range p.groups {
				if slices.Contains(r.groups, id) {
					return nil, clientError("InvalidPermission.Duplicate", "the specified rule \"peer: %s, %s, from port: %d, to port: %d, ALLOW\" already exists", id, p.protocol, p.fromPort, p.toPort)
				}
				r.groups = append(r.groups, id)
			}
			continue
		}
		if i < 0 {
			return nil, clientError("InvalidPermission.NotFound", "The specified rule does not exist in this security group.")
		}
		r := &rules[i]
		for _, cr := range p.cidrs {
			j := slices.IndexFunc(r.cidrs, func(x cidrRange) bool { return x.cidr == cr.cidr })
			if j < 0 {
				return nil, clientError("InvalidPermission.NotFound", "The specified rule does not exist in this security group.")
			}
			r.cidrs = slices.Delete(slices.Clone(r.cidrs), j, j+1)
		}
		for _, cr := range p.cidrsV6 {
			j := slices.IndexFunc(r.cidrsV6, func(x cidrRange) bool { return x.cidr == cr.cidr })
			if j < 0 {
				return nil, clientError("InvalidPermission.NotFound", "The specified rule does not exist in this security group.")
			}
			r.cidrsV6 = slices.Delete(slices.Clone(r.cidrsV6), j, j+1)
		}
		for _, id := range p.groups {
			j := slices.Index(r.groups, id)
			if j < 0 {
				return nil, clientError("InvalidPermission.NotFound", "The specified rule does not exist in this security group.")
			}
			r.groups = slices.Delete(slices.Clone(r.groups), j, j+1)
		}
		if len(r.cidrs)+len(r.cidrsV6)+len(r.groups) == 0 {
			rules = slices.Delete(rules, i, i+1)
		}
	}
	*which(g) = rules
	return returnResponse{XMLName: xmlName(response), responseMeta: meta(requestID), Return: true}, nil
}
