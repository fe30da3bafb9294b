package localcloud

import (
	"encoding/xml"
	"net/url"
	"sort"
	"strings"

	"github.com/sortie-fleet/sortie/pkg/localcloud/queryform"
)

// validateTag applies EC2's tag rules (length, the reserved aws: prefix).
func validateTag(key, value string) *apiError {
	switch {
	case key == "":
		return invalidParameter("Tag key must not be empty.")
	case len(key) > 128:
		return invalidParameter("Tag key exceeds the maximum length of 128 characters.")
	case len(value) > 256:
		return invalidParameter("Tag value exceeds the maximum length of 256 characters.")
	case strings.HasPrefix(strings.ToLower(key), "aws:"):
		return invalidParameter("Tag keys starting with 'aws:' are reserved for internal use.")
	}
	return nil
}

func (c *Cloud) createTags(requestID string, form url.Values) (any, *apiError) {
	ids := queryform.List(form, "ResourceId")
	if len(ids) == 0 {
		return nil, missingParameter("ResourceId")
	}
	newTags := formTags(form, "Tag")
	if len(newTags) == 0 {
		return nil, missingParameter("Tag")
	}
	for _, t := range newTags {
		if err := validateTag(t.Key, t.Value); err != nil {
			return nil, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	targets, err := c.taggablesLocked(ids)
	if err != nil {
		return nil, err
	}
	for _, m := range targets {
		added := 0
		for _, t := range newTags {
			if _, ok := m[t.Key]; !ok {
				added++
			}
		}
		if len(m)+added > 50 {
			return nil, clientError("TagLimitExceeded", "The maximum number of Tags for a resource has been reached.")
		}
	}
	for _, m := range targets {
		for _, t := range newTags {
			m[t.Key] = t.Value
		}
	}
	return returnResponse{XMLName: xmlName("CreateTagsResponse"), responseMeta: meta(requestID), Return: true}, nil
}

func (c *Cloud) deleteTags(requestID string, form url.Values) (any, *apiError) {
	ids := queryform.List(form, "ResourceId")
	if len(ids) == 0 {
		return nil, missingParameter("ResourceId")
	}
	del := formTags(form, "Tag")
	c.mu.Lock()
	defer c.mu.Unlock()
	targets, err := c.taggablesLocked(ids)
	if err != nil {
		return nil, err
	}
	for _, m := range targets {
		if len(del) == 0 { // no Tag.N: every tag goes
			clear(m)
			continue
		}
		for _, t := range del {
			if v, ok := m[t.Key]; ok && (!t.HasValue || v == t.Value) {
				delete(m, t.Key)
			}
		}
	}
	return returnResponse{XMLName: xmlName("DeleteTagsResponse"), responseMeta: meta(requestID), Return: true}, nil
}

// taggablesLocked returns the tag maps of instances, key pairs, VPCs, subnets and security
// groups by id.
func (c *Cloud) taggablesLocked(ids []string) ([]map[string]string, *apiError) {
	out := make([]map[string]string, 0, len(ids))
	for _, id := range ids {
		switch {
		case strings.HasPrefix(id, "i-"):
			insts, err := c.lookupInstancesLocked([]string{id})
			if err != nil {
				return nil, err
			}
			out = append(out, insts[0].tags)
		case strings.HasPrefix(id, "key-"):
			kp := c.keyPairByIDLocked(id)
			if kp == nil {
				return nil, clientError("InvalidKeyPair.NotFound", "The key pair '%s' does not exist", id)
			}
			out = append(out, kp.tags)
		default:
			m, err := c.network.tagsLocked(id)
			if err != nil {
				return nil, err
			}
			out = append(out, m)
		}
	}
	return out, nil
}

type xmlResourceTag struct {
	ResourceID   string `xml:"resourceId"`
	ResourceType string `xml:"resourceType"`
	Key          string `xml:"key"`
	Value        string `xml:"value"`
}

type describeTagsResponse struct {
	XMLName xml.Name `xml:"DescribeTagsResponse"`
	responseMeta
	Tags []xmlResourceTag `xml:"tagSet>item"`
}

var resourceTagAttributes = map[string]attribute[xmlResourceTag]{
	"resource-id":   func(t xmlResourceTag) []string { return []string{t.ResourceID} },
	"resource-type": func(t xmlResourceTag) []string { return []string{t.ResourceType} },
	"key":           func(t xmlResourceTag) []string { return []string{t.Key} },
	"value":         func(t xmlResourceTag) []string { return []string{t.Value} },
}

// describeTags lists the tags of every resource the cloud keeps (instances, key pairs,
// VPCs, subnets, security groups), one item per tag.
func (c *Cloud) describeTags(requestID string, form url.Values) (any, *apiError) {
	match, err := compileFilters(filters(form), resourceTagAttributes, func(t xmlResourceTag) map[string]string {
		return map[string]string{t.Key: t.Value}
	})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	resp := describeTagsResponse{responseMeta: meta(requestID)}
	add := func(id, kind string, m map[string]string) {
		for _, t := range renderTags(m) {
			if x := (xmlResourceTag{ResourceID: id, ResourceType: kind, Key: t.Key, Value: t.Value}); match(x) {
				resp.Tags = append(resp.Tags, x)
			}
		}
	}
	for _, inst := range c.order {
		if inst.state != stateTerminated {
			add(inst.id, "instance", inst.tags)
		}
	}
	names := make([]string, 0, len(c.keyPairs))
	for name := range c.keyPairs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		add(c.keyPairs[name].id, "key-pair", c.keyPairs[name].tags)
	}
	for _, v := range c.network.vpcs {
		add(v.id, "vpc", v.tags)
	}
	for _, s := range c.network.subnets {
		add(s.id, "subnet", s.tags)
	}
	for _, g := range c.network.groups {
		add(g.id, "security-group", g.tags)
	}
	return resp, nil
}
