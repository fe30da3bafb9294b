package localcloud

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"net/url"
	"slices"
	"sort"
	"strconv"

	"github.com/sortie-fleet/sortie/pkg/localcloud/queryform"
	"github.com/sortie-fleet/sortie/pkg/opsconfig"
)

// Images: the local cloud runs any well-formed AMI id the same way (an instance is an SSH
// host on this machine), so DescribeImages describes any ami- id asked for, and lists the
// AMIs of the default ops configuration's templates and of every launched instance.

type xmlEBS struct {
	SnapshotID          string `xml:"snapshotId"`
	VolumeSize          int    `xml:"volumeSize"`
	DeleteOnTermination bool   `xml:"deleteOnTermination"`
	VolumeType          string `xml:"volumeType"`
	Encrypted           bool   `xml:"encrypted"`
}

type xmlBlockDevice struct {
	DeviceName string  `xml:"deviceName"`
	EBS        *xmlEBS `xml:"ebs,omitempty"`
}

type xmlImage struct {
	ImageID            string           `xml:"imageId"`
	ImageLocation      string           `xml:"imageLocation"`
	ImageState         string           `xml:"imageState"`
	OwnerID            string           `xml:"imageOwnerId"`
	CreationDate       string           `xml:"creationDate"`
	IsPublic           bool             `xml:"isPublic"`
	Architecture       string           `xml:"architecture"`
	ImageType          string           `xml:"imageType"`
	Name               string           `xml:"name"`
	Description        string           `xml:"description"`
	RootDeviceType     string           `xml:"rootDeviceType"`
	RootDeviceName     string           `xml:"rootDeviceName"`
	BlockDevices       []xmlBlockDevice `xml:"blockDeviceMapping>item"`
	VirtualizationType string           `xml:"virtualizationType"`
	Hypervisor         string           `xml:"hypervisor"`
	EnaSupport         bool             `xml:"enaSupport"`
	PlatformDetails    string           `xml:"platformDetails"`
	UsageOperation     string           `xml:"usageOperation"`
	BootMode           string           `xml:"bootMode"`
}

type describeImagesResponse struct {
	XMLName xml.Name `xml:"DescribeImagesResponse"`
	responseMeta
	Images []xmlImage `xml:"imagesSet>item"`
}

// rootDevice is the root device of every image and instance.
const rootDevice = "/dev/xvda"

func renderImage(id string) xmlImage {
	sum := sha256.Sum256([]byte(id))
	return xmlImage{
		ImageID: id, ImageLocation: ownerID + "/sortie-local-" + id, ImageState: "available", OwnerID: ownerID,
		CreationDate: "2026-01-01T00:00:00.000Z", Architecture: "x86_64", ImageType: "machine",
		Name: "sortie-local-" + id, Description: "Local cloud image: instances are SSH hosts on this machine",
		RootDeviceType: "ebs", RootDeviceName: rootDevice,
		BlockDevices: []xmlBlockDevice{{DeviceName: rootDevice, EBS: &xmlEBS{
			SnapshotID: "snap-" + hex.EncodeToString(sum[:])[:17], VolumeSize: 8, DeleteOnTermination: true, VolumeType: "gp3",
		}}},
		VirtualizationType: "hvm", Hypervisor: "xen", EnaSupport: true,
		PlatformDetails: "Linux/UNIX", UsageOperation: "RunInstances", BootMode: "uefi-preferred",
	}
}

var imageAttributes = map[string]attribute[xmlImage]{
	"image-id":            func(i xmlImage) []string { return []string{i.ImageID} },
	"name":                func(i xmlImage) []string { return []string{i.Name} },
	"state":               func(i xmlImage) []string { return []string{i.ImageState} },
	"architecture":        func(i xmlImage) []string { return []string{i.Architecture} },
	"owner-id":            func(i xmlImage) []string { return []string{i.OwnerID} },
	"image-type":          func(i xmlImage) []string { return []string{i.ImageType} },
	"is-public":           func(i xmlImage) []string { return []string{strconv.FormatBool(i.IsPublic)} },
	"root-device-type":    func(i xmlImage) []string { return []string{i.RootDeviceType} },
	"virtualization-type": func(i xmlImage) []string { return []string{i.VirtualizationType} },
}

func (c *Cloud) describeImages(requestID string, form url.Values) (any, *apiError) {
	match, err := compileFilters(filters(form), imageAttributes, func(xmlImage) map[string]string { return nil })
	if err != nil {
		return nil, err
	}
	ids := queryform.List(form, "ImageId")
	for _, id := range ids {
		if !imageIDPattern.MatchString(id) {
			return nil, clientError("InvalidAMIID.Malformed", "Invalid id: %q (expecting \"ami-...\")", id)
		}
	}
	if len(ids) == 0 {
		ids = c.knownImages()
	}
	resp := describeImagesResponse{responseMeta: meta(requestID)}
	for _, id := range ids {
		if img := renderImage(id); match(img) {
			resp.Images = append(resp.Images, img)
		}
	}
	return resp, nil
}

// knownImages returns the default templates' AMIs and those instances were launched from.
func (c *Cloud) knownImages() []string {
	var ids []string
	for _, t := range opsconfig.Default().Templates {
		ids = append(ids, t.AMI)
	}
	c.mu.Lock()
	for _, inst := range c.order {
		ids = append(ids, inst.imageID)
	}
	c.mu.Unlock()
	sort.Strings(ids)
	return slices.Compact(ids)
}

// Instance status: a running instance passes both checks at once; pending and stopping
// instances have no status to report yet.

type xmlStatusDetail struct {
	Name   string `xml:"name"`
	Status string `xml:"status"`
}

type xmlStatusSummary struct {
	Status  string            `xml:"status"`
	Details []xmlStatusDetail `xml:"details>item"`
}

type xmlInstanceStatus struct {
	InstanceID       string           `xml:"instanceId"`
	AvailabilityZone string           `xml:"availabilityZone"`
	State            xmlState         `xml:"instanceState"`
	SystemStatus     xmlStatusSummary `xml:"systemStatus"`
	InstanceStatus   xmlStatusSummary `xml:"instanceStatus"`
}

type describeInstanceStatusResponse struct {
	XMLName xml.Name `xml:"DescribeInstanceStatusResponse"`
	responseMeta
	Statuses []xmlInstanceStatus `xml:"instanceStatusSet>item"`
}

func statusSummary(s xmlState) xmlStatusSummary {
	if s != stateRunning {
		return xmlStatusSummary{Status: "not-applicable"}
	}
	return xmlStatusSummary{Status: "ok", Details: []xmlStatusDetail{{Name: "reachability", Status: "passed"}}}
}

var instanceStatusAttributes = map[string]attribute[xmlInstanceStatus]{
	"instance-state-name":    func(s xmlInstanceStatus) []string { return []string{s.State.Name} },
	"instance-state-code":    func(s xmlInstanceStatus) []string { return []string{strconv.Itoa(s.State.Code)} },
	"availability-zone":      func(s xmlInstanceStatus) []string { return []string{s.AvailabilityZone} },
	"instance-status.status": func(s xmlInstanceStatus) []string { return []string{s.InstanceStatus.Status} },
	"system-status.status":   func(s xmlInstanceStatus) []string { return []string{s.SystemStatus.Status} },
}

func (c *Cloud) describeInstanceStatus(requestID string, form url.Values) (any, *apiError) {
	match, err := compileFilters(filters(form), instanceStatusAttributes, func(xmlInstanceStatus) map[string]string { return nil })
	if err != nil {
		return nil, err
	}
	all := form.Get("IncludeAllInstances") == "true"
	ids := queryform.List(form, "InstanceId")
	c.mu.Lock()
	defer c.mu.Unlock()
	candidates := c.order
	if len(ids) > 0 {
		if candidates, err = c.lookupInstancesLocked(ids); err != nil {
			return nil, err
		}
	}
	resp := describeInstanceStatusResponse{responseMeta: meta(requestID)}
	for _, inst := range candidates {
		if !all && inst.state != stateRunning {
			continue
		}
		s := xmlInstanceStatus{
			InstanceID: inst.id, AvailabilityZone: inst.zone, State: inst.state,
			SystemStatus: statusSummary(inst.state), InstanceStatus: statusSummary(inst.state),
		}
		if match(s) {
			resp.Statuses = append(resp.Statuses, s)
		}
	}
	return resp, nil
}

// DescribeInstanceAttribute: one attribute per call, in a document named for it.

type xmlValue struct {
	Value string `xml:"value"`
}

type describeInstanceAttributeResponse struct {
	XMLName xml.Name `xml:"DescribeInstanceAttributeResponse"`
	responseMeta
	InstanceID            string           `xml:"instanceId"`
	InstanceType          *xmlValue        `xml:"instanceType,omitempty"`
	UserData              *xmlValue        `xml:"userData,omitempty"`
	DisableAPITermination *xmlValue        `xml:"disableApiTermination,omitempty"`
	DisableAPIStop        *xmlValue        `xml:"disableApiStop,omitempty"`
	ShutdownBehavior      *xmlValue        `xml:"instanceInitiatedShutdownBehavior,omitempty"`
	RootDeviceName        *xmlValue        `xml:"rootDeviceName,omitempty"`
	SourceDestCheck       *xmlValue        `xml:"sourceDestCheck,omitempty"`
	EbsOptimized          *xmlValue        `xml:"ebsOptimized,omitempty"`
	EnaSupport            *xmlValue        `xml:"enaSupport,omitempty"`
	Kernel                *xmlValue        `xml:"kernel,omitempty"`
	Ramdisk               *xmlValue        `xml:"ramdisk,omitempty"`
	Groups                []xmlGroup       `xml:"groupSet>item,omitempty"`
	BlockDevices          []xmlBlockDevice `xml:"blockDeviceMapping>item,omitempty"`
}

func (c *Cloud) describeInstanceAttribute(requestID string, form url.Values) (any, *apiError) {
	id, attr := form.Get("InstanceId"), form.Get("Attribute")
	if id == "" {
		return nil, missingParameter("InstanceId")
	}
	if attr == "" {
		return nil, missingParameter("Attribute")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	insts, err := c.lookupInstancesLocked([]string{id})
	if err != nil {
		return nil, err
	}
	inst := insts[0]
	resp := describeInstanceAttributeResponse{responseMeta: meta(requestID), InstanceID: inst.id}
	switch attr {
	case "instanceType":
		resp.InstanceType = &xmlValue{inst.instanceType}
	case "userData":
		resp.UserData = &xmlValue{}
		if len(inst.userData) > 0 {
			resp.UserData.Value = base64.StdEncoding.EncodeToString(inst.userData)
		}
	case "disableApiTermination":
		resp.DisableAPITermination = &xmlValue{"false"}
	case "disableApiStop":
		resp.DisableAPIStop = &xmlValue{"false"}
	case "instanceInitiatedShutdownBehavior":
		resp.ShutdownBehavior = &xmlValue{"stop"}
	case "rootDeviceName":
		resp.RootDeviceName = &xmlValue{rootDevice}
	case "sourceDestCheck":
		resp.SourceDestCheck = &xmlValue{"true"}
	case "ebsOptimized":
		resp.EbsOptimized = &xmlValue{"false"}
	case "enaSupport":
		resp.EnaSupport = &xmlValue{"true"}
	case "kernel":
		resp.Kernel = &xmlValue{}
	case "ramdisk":
		resp.Ramdisk = &xmlValue{}
	case "groupSet":
		resp.Groups = c.network.renderGroups(inst.groups)
	case "blockDeviceMapping":
		resp.BlockDevices = []xmlBlockDevice{{DeviceName: rootDevice}}
	default:
		return nil, invalidParameter("Value (%s) for parameter attribute is invalid. Unknown attribute.", attr)
	}
	return resp, nil
}
