package localcloud

import (
	"encoding/xml"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sortie-fleet/sortie/pkg/localcloud/queryform"
)

// ec2Version is the only EC2 Query API version the local cloud speaks.
const ec2Version = "2016-11-15"

// ec2Namespace is the XML namespace of every EC2 response.
const ec2Namespace = "http://ec2.amazonaws.com/doc/" + ec2Version + "/"

// ownerID is the account every resource belongs to (kumo's account).
const ownerID = "000000000000"

// Account is the account id of every resource on the local cloud (kumo's): ARNs built
// for it (the least-privilege test's) use it.
const Account = ownerID

// timeLayout is how EC2 renders timestamps.
const timeLayout = "2006-01-02T15:04:05.000Z"

// apiError is an EC2 error response: a code the SDK surfaces as smithy.APIError.ErrorCode,
// a message, and the HTTP status AWS sends with it.
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func clientError(code, format string, args ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: code, Message: fmt.Sprintf(format, args...)}
}

func invalidParameter(format string, args ...any) *apiError {
	return clientError("InvalidParameterValue", format, args...)
}

func missingParameter(name string) *apiError {
	return clientError("MissingParameter", "The request must contain the parameter %s", name)
}

// errorResponse is the EC2 error document (note: no namespace, RequestID in capitals).
type errorResponse struct {
	XMLName   xml.Name `xml:"Response"`
	Errors    []xmlErr `xml:"Errors>Error"`
	RequestID string   `xml:"RequestID"`
}

type xmlErr struct {
	Code    string `xml:"Code"`
	Message string `xml:"Message"`
}

func writeError(w http.ResponseWriter, requestID string, e *apiError) {
	writeXMLStatus(w, e.Status, errorResponse{
		Errors:    []xmlErr{{Code: e.Code, Message: e.Message}},
		RequestID: requestID,
	})
}

func writeXML(w http.ResponseWriter, v any) { writeXMLStatus(w, http.StatusOK, v) }

func writeXMLStatus(w http.ResponseWriter, status int, v any) {
	body, err := xml.Marshal(v)
	if err != nil {
		http.Error(w, "encoding response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(body)
}

// Response documents. Each carries the namespace and the request id.

type responseMeta struct {
	Xmlns     string `xml:"xmlns,attr"`
	RequestID string `xml:"requestId"`
}

func meta(requestID string) responseMeta {
	return responseMeta{Xmlns: ec2Namespace, RequestID: requestID}
}

type xmlTag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

type xmlState struct {
	Code int    `xml:"code"`
	Name string `xml:"name"`
}

type xmlGroup struct {
	GroupID   string `xml:"groupId"`
	GroupName string `xml:"groupName,omitempty"`
}

type xmlStateReason struct {
	Code    string `xml:"code"`
	Message string `xml:"message"`
}

type xmlProfile struct {
	Arn string `xml:"arn"`
	ID  string `xml:"id"`
}

type xmlPlacement struct {
	AvailabilityZone string `xml:"availabilityZone"`
	Tenancy          string `xml:"tenancy"`
}

type xmlMonitoring struct {
	State string `xml:"state"`
}

// xmlMetadataOptions is an instance's metadataOptions (InstanceMetadataOptionsResponse).
type xmlMetadataOptions struct {
	State                   string `xml:"state"`
	HTTPTokens              string `xml:"httpTokens"`
	HTTPPutResponseHopLimit int    `xml:"httpPutResponseHopLimit"`
	HTTPEndpoint            string `xml:"httpEndpoint"`
	HTTPProtocolIPv6        string `xml:"httpProtocolIpv6"`
	InstanceMetadataTags    string `xml:"instanceMetadataTags"`
}

type xmlInstance struct {
	InstanceID         string                   `xml:"instanceId"`
	ImageID            string                   `xml:"imageId"`
	State              xmlState                 `xml:"instanceState"`
	PrivateDNSName     string                   `xml:"privateDnsName"`
	DNSName            string                   `xml:"dnsName"`
	Reason             string                   `xml:"reason"`
	KeyName            string                   `xml:"keyName,omitempty"`
	AmiLaunchIndex     int                      `xml:"amiLaunchIndex"`
	InstanceType       string                   `xml:"instanceType"`
	LaunchTime         string                   `xml:"launchTime"`
	Placement          xmlPlacement             `xml:"placement"`
	Monitoring         xmlMonitoring            `xml:"monitoring"`
	SubnetID           string                   `xml:"subnetId,omitempty"`
	VpcID              string                   `xml:"vpcId,omitempty"`
	PrivateIPAddress   string                   `xml:"privateIpAddress,omitempty"`
	Groups             []xmlGroup               `xml:"groupSet>item"`
	StateReason        *xmlStateReason          `xml:"stateReason,omitempty"`
	Architecture       string                   `xml:"architecture"`
	RootDeviceType     string                   `xml:"rootDeviceType"`
	RootDeviceName     string                   `xml:"rootDeviceName"`
	VirtualizationType string                   `xml:"virtualizationType"`
	ClientToken        string                   `xml:"clientToken,omitempty"`
	Tags               []xmlTag                 `xml:"tagSet>item,omitempty"`
	Hypervisor         string                   `xml:"hypervisor"`
	IamInstanceProfile *xmlProfile              `xml:"iamInstanceProfile,omitempty"`
	PlatformDetails    string                   `xml:"platformDetails"`
	MetadataOptions    xmlMetadataOptions       `xml:"metadataOptions"`
	NetworkInterfaces  []xmlNetworkInterface    `xml:"networkInterfaceSet>item"`
	BlockDevices       []xmlInstanceBlockDevice `xml:"blockDeviceMapping>item"`
	// InstanceLifecycle is "spot" for a spot instance; absent on demand.
	InstanceLifecycle     string `xml:"instanceLifecycle,omitempty"`
	SpotInstanceRequestID string `xml:"spotInstanceRequestId,omitempty"`
}

type xmlReservation struct {
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Groups        []xmlGroup    `xml:"groupSet>item"`
	Instances     []xmlInstance `xml:"instancesSet>item"`
}

type runInstancesResponse struct {
	XMLName xml.Name `xml:"RunInstancesResponse"`
	responseMeta
	xmlReservation
}

type describeInstancesResponse struct {
	XMLName xml.Name `xml:"DescribeInstancesResponse"`
	responseMeta
	Reservations []xmlReservation `xml:"reservationSet>item"`
	NextToken    string           `xml:"nextToken,omitempty"`
}

type xmlStateChange struct {
	InstanceID    string   `xml:"instanceId"`
	CurrentState  xmlState `xml:"currentState"`
	PreviousState xmlState `xml:"previousState"`
}

type terminateInstancesResponse struct {
	XMLName xml.Name `xml:"TerminateInstancesResponse"`
	responseMeta
	Changes []xmlStateChange `xml:"instancesSet>item"`
}

type returnResponse struct {
	XMLName xml.Name
	responseMeta
	Return bool `xml:"return"`
}

type createKeyPairResponse struct {
	XMLName xml.Name `xml:"CreateKeyPairResponse"`
	responseMeta
	KeyName        string   `xml:"keyName"`
	KeyFingerprint string   `xml:"keyFingerprint"`
	KeyMaterial    string   `xml:"keyMaterial"`
	KeyPairID      string   `xml:"keyPairId"`
	Tags           []xmlTag `xml:"tagSet>item,omitempty"`
}

type importKeyPairResponse struct {
	XMLName xml.Name `xml:"ImportKeyPairResponse"`
	responseMeta
	KeyName        string   `xml:"keyName"`
	KeyFingerprint string   `xml:"keyFingerprint"`
	KeyPairID      string   `xml:"keyPairId"`
	Tags           []xmlTag `xml:"tagSet>item,omitempty"`
}

type xmlKeyPair struct {
	KeyPairID      string   `xml:"keyPairId"`
	KeyName        string   `xml:"keyName"`
	KeyFingerprint string   `xml:"keyFingerprint"`
	KeyType        string   `xml:"keyType"`
	CreateTime     string   `xml:"createTime"`
	PublicKey      string   `xml:"publicKey,omitempty"`
	Tags           []xmlTag `xml:"tagSet>item,omitempty"`
}

type describeKeyPairsResponse struct {
	XMLName xml.Name `xml:"DescribeKeyPairsResponse"`
	responseMeta
	Keys []xmlKeyPair `xml:"keySet>item"`
}

type deleteKeyPairResponse struct {
	XMLName xml.Name `xml:"DeleteKeyPairResponse"`
	responseMeta
	Return    bool   `xml:"return"`
	KeyPairID string `xml:"keyPairId,omitempty"`
}

type getConsoleOutputResponse struct {
	XMLName xml.Name `xml:"GetConsoleOutputResponse"`
	responseMeta
	InstanceID string `xml:"instanceId"`
	Timestamp  string `xml:"timestamp"`
	Output     string `xml:"output"`
}

// Query request helpers; flattened lists (Name.1, Name.2, …) are read with pkg/localcloud/queryform.

// formTag is one Tag.N (Key, optional Value) of a request.
type formTag struct {
	Key      string
	Value    string
	HasValue bool
}

// tags returns prefix.N.Key / prefix.N.Value pairs.
func formTags(form url.Values, prefix string) []formTag {
	var out []formTag
	for _, n := range queryform.Indices(form, prefix) {
		base := prefix + "." + strconv.Itoa(n)
		v, has := form[base+".Value"]
		t := formTag{Key: form.Get(base + ".Key"), HasValue: has}
		if has && len(v) > 0 {
			t.Value = v[0]
		}
		out = append(out, t)
	}
	return out
}

// formFilter is one Filter.N of a request.
type formFilter struct {
	Name   string
	Values []string
}

func filters(form url.Values) []formFilter {
	var out []formFilter
	for _, n := range queryform.Indices(form, "Filter") {
		base := "Filter." + strconv.Itoa(n)
		out = append(out, formFilter{Name: form.Get(base + ".Name"), Values: queryform.List(form, base+".Value")})
	}
	return out
}

// intParam parses an optional integer parameter.
func intParam(form url.Values, name string, def int) (int, *apiError) {
	s := form.Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, invalidParameter("Value (%s) for parameter %s is invalid. Expected an integer.", s, name)
	}
	return n, nil
}

// fingerprintForm is a canonical rendering of every parameter except the ones that do not
// define the request (Action, Version, ClientToken, DryRun), for idempotency checks.
func fingerprintForm(form url.Values) string {
	keys := make([]string, 0, len(form))
	for k := range form {
		switch k {
		case "Action", "Version", "ClientToken", "DryRun":
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		for _, v := range form[k] {
			b.WriteString(url.QueryEscape(k))
			b.WriteByte('=')
			b.WriteString(url.QueryEscape(v))
			b.WriteByte('&')
		}
	}
	return b.String()
}

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func renderTags(m map[string]string) []xmlTag {
	if len(m) == 0 {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]xmlTag, len(keys))
	for i, k := range keys {
		out[i] = xmlTag{Key: k, Value: m[k]}
	}
	return out
}

func xmlName(local string) xml.Name { return xml.Name{Local: local} }
