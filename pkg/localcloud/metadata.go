package localcloud

import (
	"net/url"
	"slices"
)

// metadataOptions is what RunInstances' MetadataOptions asked of the instance metadata
// service (IMDS), with AWS's defaults for what it left out: tokens optional (IMDSv1
// allowed), hop limit 1, endpoint enabled.
type metadataOptions struct {
	HTTPTokens   string
	HopLimit     int
	HTTPEndpoint string
	IPv6         string
	Tags         string
}

// parseMetadataOptions reads MetadataOptions.* of a RunInstances request, refusing values
// EC2 refuses.
func parseMetadataOptions(form url.Values) (metadataOptions, *apiError) {
	m := metadataOptions{HTTPTokens: "optional", HopLimit: 1, HTTPEndpoint: "enabled", IPv6: "disabled", Tags: "disabled"}
	for _, f := range []struct {
		name  string
		field *string
		allow []string
	}{
		{"HttpTokens", &m.HTTPTokens, []string{"optional", "required"}},
		{"HttpEndpoint", &m.HTTPEndpoint, []string{"enabled", "disabled"}},
		{"HttpProtocolIpv6", &m.IPv6, []string{"enabled", "disabled"}},
		{"InstanceMetadataTags", &m.Tags, []string{"enabled", "disabled"}},
	} {
		v := form.Get("MetadataOptions." + f.name)
		if v == "" {
			continue
		}
		if !slices.Contains(f.allow, v) {
			return m, invalidParameter("Value (%s) for parameter MetadataOptions.%s is invalid.", v, f.name)
		}
		*f.field = v
	}
	hop, err := intParam(form, "MetadataOptions.HttpPutResponseHopLimit", 1)
	if err != nil {
		return m, err
	}
	if hop < 1 || hop > 64 {
		return m, invalidParameter("Value (%d) for parameter MetadataOptions.HttpPutResponseHopLimit is invalid. Expected 1-64.", hop)
	}
	m.HopLimit = hop
	return m, nil
}

func (m metadataOptions) render() xmlMetadataOptions {
	return xmlMetadataOptions{
		State:                   "applied",
		HTTPTokens:              m.HTTPTokens,
		HTTPPutResponseHopLimit: m.HopLimit,
		HTTPEndpoint:            m.HTTPEndpoint,
		HTTPProtocolIPv6:        m.IPv6,
		InstanceMetadataTags:    m.Tags,
	}
}
