package localcloud

import (
	"net/http"
	"net/url"

	"github.com/google/uuid"
)

// ec2Handler answers one EC2 action; it returns the response document or an error.
type ec2Handler func(c *Cloud, requestID string, form url.Values) (any, *apiError)

// handlers lists the EC2 actions the local cloud implements; any other EC2 action gets
// InvalidAction.
var handlers = map[string]ec2Handler{
	"RunInstances":                  (*Cloud).runInstances,
	"DescribeInstances":             (*Cloud).describeInstances,
	"TerminateInstances":            (*Cloud).terminateInstances,
	"DescribeInstanceStatus":        (*Cloud).describeInstanceStatus,
	"DescribeInstanceAttribute":     (*Cloud).describeInstanceAttribute,
	"CreateTags":                    (*Cloud).createTags,
	"DeleteTags":                    (*Cloud).deleteTags,
	"DescribeTags":                  (*Cloud).describeTags,
	"CreateKeyPair":                 (*Cloud).createKeyPair,
	"ImportKeyPair":                 (*Cloud).importKeyPair,
	"DescribeKeyPairs":              (*Cloud).describeKeyPairs,
	"DeleteKeyPair":                 (*Cloud).deleteKeyPair,
	"GetConsoleOutput":              (*Cloud).getConsoleOutput,
	"DescribeVpcs":                  (*Cloud).describeVpcs,
	"DescribeVpcAttribute":          (*Cloud).describeVpcAttribute,
	"DescribeSubnets":               (*Cloud).describeSubnets,
	"DescribeAvailabilityZones":     (*Cloud).describeAvailabilityZones,
	"DescribeRegions":               (*Cloud).describeRegions,
	"DescribeImages":                (*Cloud).describeImages,
	"DescribeSecurityGroups":        (*Cloud).describeSecurityGroups,
	"CreateSecurityGroup":           (*Cloud).createSecurityGroup,
	"DeleteSecurityGroup":           (*Cloud).deleteSecurityGroup,
	"AuthorizeSecurityGroupIngress": (*Cloud).authorizeIngress,
	"AuthorizeSecurityGroupEgress":  (*Cloud).authorizeEgress,
	"RevokeSecurityGroupIngress":    (*Cloud).revokeIngress,
	"RevokeSecurityGroupEgress":     (*Cloud).revokeEgress,

	// ClassicLink is retired; clients (Ansible's ec2_vpc_net_info) still ask.
	"DescribeVpcClassicLink":           classicLinkRetired,
	"DescribeVpcClassicLinkDnsSupport": classicLinkRetired,
}

// unknownAction answers an EC2 action the local cloud does not implement, as AWS answers
// one that does not exist.
func unknownAction(_ *Cloud, _ string, form url.Values) (any, *apiError) {
	action := form.Get("Action")
	if action == "" {
		return nil, missingParameter("Action")
	}
	return nil, clientError("InvalidAction", "The action %s is not valid for this web service.", action)
}

func (c *Cloud) serveEC2(w http.ResponseWriter, action string, form url.Values, h ec2Handler) {
	requestID := uuid.NewString()
	if err := c.admit(); err != nil {
		c.log.Info("ec2 request refused", "action", action, "code", err.Code)
		writeError(w, requestID, err)
		return
	}
	if form.Get("DryRun") == "true" {
		writeError(w, requestID, &apiError{
			Status:  http.StatusPreconditionFailed,
			Code:    "DryRunOperation",
			Message: "Request would have succeeded, but DryRun flag is set.",
		})
		return
	}
	resp, err := h(c, requestID, form)
	if err != nil {
		c.log.Info("ec2 request failed", "action", action, "code", err.Code, "message", err.Message)
		writeError(w, requestID, err)
		return
	}
	c.log.Debug("ec2 request", "action", action)
	writeXML(w, resp)
}

// admit applies the injected throttling and refuses requests once the cloud is closing.
func (c *Cloud) admit() *apiError {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return &apiError{Status: http.StatusServiceUnavailable, Code: "Unavailable", Message: "The local cloud is shutting down."}
	}
	if c.throttle.hit() {
		return &apiError{Status: http.StatusServiceUnavailable, Code: "RequestLimitExceeded", Message: "Request limit exceeded."}
	}
	return nil
}
