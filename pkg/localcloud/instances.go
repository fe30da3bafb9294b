package localcloud

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sortie-fleet/sortie/pkg/localcloud/queryform"
)

// tags.SSHEndpoint is the instance tag holding the instance's SSH endpoint (host:port).

// availabilityZone is the only zone of the local cloud.
const availabilityZone = "us-east-1a"

// Instance states with the codes AWS reports.
var (
	statePending      = xmlState{Code: 0, Name: "pending"}
	stateRunning      = xmlState{Code: 16, Name: "running"}
	stateShuttingDown = xmlState{Code: 32, Name: "shutting-down"}
	stateTerminated   = xmlState{Code: 48, Name: "terminated"}
)

// instance is one launched instance. Fields below mu are guarded by Cloud.mu.
type instance struct {
	id            string
	reservationID string
	seq           int
	imageID       string
	instanceType  string
	keyName       string
	authorizedKey ssh.PublicKey // the key pair's public key at launch; nil: nobody logs in
	subnetID      string
	vpcID         string
	zone          string
	groups        []string
	profile       *xmlProfile
	roleName      string
	clientToken   string
	launchIndex   int
	launchTime    time.Time
	privateIP     string
	userData      []byte
	metadata      metadataOptions
	spot          *spotOptions // nil: on demand

	stop   chan struct{} // closed when termination starts
	booted chan struct{} // closed when the boot goroutine is done

	state       xmlState
	stateReason *xmlStateReason
	reason      string
	lastNotice  <-chan struct{} // closed once the instance's latest EC2 notice is delivered
	interrupted bool            // a spot interruption is under way
	tags        map[string]string
	hostKey     ssh.PublicKey
	host        sshServer
}

type clientTokenRecord struct {
	fingerprint   string
	reservationID string
}

var (
	instanceIDPattern = regexp.MustCompile(`^i-([0-9a-f]{8}|[0-9a-f]{17})$`)
	imageIDPattern    = regexp.MustCompile(`^ami-([0-9a-f]{8}|[0-9a-f]{17})$`)
)

// newID returns prefix + 17 lower-case hex digits, as AWS's long resource ids.
func newID(prefix string) string {
	var b [9]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])[:17]
}

func (c *Cloud) runInstances(requestID string, form url.Values) (any, *apiError) {
	imageID := form.Get("ImageId")
	if imageID == "" {
		return nil, missingParameter("ImageId")
	}
	if !imageIDPattern.MatchString(imageID) {
		return nil, clientError("InvalidAMIID.Malformed", "Invalid id: %q (expecting \"ami-...\")", imageID)
	}
	minCount, err := intParam(form, "MinCount", 0)
	if err != nil {
		return nil, err
	}
	maxCount, err := intParam(form, "MaxCount", 0)
	if err != nil {
		return nil, err
	}
	if form.Get("MinCount") == "" {
		return nil, missingParameter("MinCount")
	}
	if form.Get("MaxCount") == "" {
		return nil, missingParameter("MaxCount")
	}
	if minCount < 1 {
		return nil, invalidParameter("Value (%d) for parameter minCount is invalid. Expected a positive integer.", minCount)
	}
	if maxCount < minCount {
		return nil, invalidParameter("Value (%d) for parameter maxCount is invalid. Expected a value greater than or equal to minCount (%d).", maxCount, minCount)
	}
	instanceType := form.Get("InstanceType")
	if instanceType == "" {
		instanceType = "m1.small" // AWS's default
	}
	token := form.Get("ClientToken")
	if len(token) > 64 || !isASCII(token) {
		return nil, invalidParameter("Value (%s) for parameter clientToken is invalid. Expected at most 64 ASCII characters.", token)
	}
	var userData []byte
	if s := form.Get("UserData"); s != "" {
		b, decErr := base64.StdEncoding.DecodeString(s)
		if decErr != nil {
			return nil, invalidParameter("Invalid BASE64 encoding of user data.")
		}
		if len(b) > MaxUserDataBytes {
			return nil, invalidParameter("User data is limited to %d bytes, got %d.", MaxUserDataBytes, len(b))
		}
		userData = b
	}
	instanceTags, err := tagSpecifications(form, "instance")
	if err != nil {
		return nil, err
	}
	profile, roleName, err := instanceProfile(form)
	if err != nil {
		return nil, err
	}
	metadata, err := parseMetadataOptions(form)
	if err != nil {
		return nil, err
	}
	spot, err := parseMarketOptions(form)
	if err != nil {
		return nil, err
	}
	fingerprint := fingerprintForm(form)

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, &apiError{Status: http.StatusServiceUnavailable, Code: "Unavailable", Message: "The local cloud is shutting down."}
	}
	if token != "" {
		if rec, ok := c.tokens[token]; ok {
			if rec.fingerprint != fingerprint {
				return nil, clientError("IdempotentParameterMismatch", "Arguments on this idempotent request are inconsistent with arguments used in previous request(s).")
			}
			return runInstancesResponse{responseMeta: meta(requestID), xmlReservation: c.renderReservationLocked(rec.reservationID, c.reservations[rec.reservationID])}, nil
		}
	}

	var authorized ssh.PublicKey
	keyName := form.Get("KeyName")
	if keyName != "" {
		kp, ok := c.keyPairs[keyName]
		if !ok {
			return nil, clientError("InvalidKeyPair.NotFound", "The key pair '%s' does not exist", keyName)
		}
		authorized = kp.public
	}

	where, netErr := c.network.placeLocked(form)
	if netErr != nil {
		return nil, netErr
	}
	groups, netErr := c.network.groupsLocked(form, where.vpcID)
	if netErr != nil {
		return nil, netErr
	}

	if spot != nil {
		if spotErr := c.spotLaunchableLocked(instanceType, spot); spotErr != nil {
			return nil, spotErr
		}
	}
	count, capErr := c.launchableLocked(instanceType, minCount, maxCount)
	if capErr != nil {
		return nil, capErr
	}

	reservationID := newID("r-")
	now := time.Now()
	launched := make([]*instance, 0, count)
	for i := range count {
		inst := &instance{
			id:            newID("i-"),
			reservationID: reservationID,
			seq:           len(c.order),
			imageID:       imageID,
			instanceType:  instanceType,
			keyName:       keyName,
			authorizedKey: authorized,
			subnetID:      where.subnetID,
			vpcID:         where.vpcID,
			zone:          where.zone,
			groups:        groups,
			profile:       profile,
			roleName:      roleName,
			clientToken:   token,
			launchIndex:   i,
			launchTime:    now,
			privateIP:     c.network.nextPrivateIPLocked(where.cidr),
			userData:      userData,
			metadata:      metadata,
			spot:          spot,
			stop:          make(chan struct{}),
			booted:        make(chan struct{}),
			state:         statePending,
			tags:          map[string]string{},
		}
		for k, v := range instanceTags {
			inst.tags[k] = v
		}
		c.instances[inst.id] = inst
		c.order = append(c.order, inst)
		launched = append(launched, inst)
		c.wg.Add(1)
		go c.boot(inst)
	}
	c.reservations[reservationID] = launched
	if token != "" {
		c.tokens[token] = clientTokenRecord{fingerprint: fingerprint, reservationID: reservationID}
	}
	c.log.Info("instances launched", "reservation", reservationID, "count", count, "instance_type", instanceType)
	return runInstancesResponse{responseMeta: meta(requestID), xmlReservation: c.renderReservationLocked(reservationID, launched)}, nil
}

// launchableLocked returns how many of [minCount, maxCount] instances of instanceType fit
// the type's capacity and the instance limit.
func (c *Cloud) launchableLocked(instanceType string, minCount, maxCount int) (int, *apiError) {
	active, activeOfType := 0, 0
	for _, inst := range c.order {
		if inst.state == stateTerminated || inst.state == stateShuttingDown {
			continue
		}
		active++
		if inst.instanceType == instanceType {
			activeOfType++
		}
	}
	count := maxCount
	if capacity, ok := c.capacity[instanceType]; ok {
		count = min(count, max(capacity-activeOfType, 0))
		if count < minCount {
			return 0, &apiError{
				Status: http.StatusInternalServerError,
				Code:   "InsufficientInstanceCapacity",
				Message: fmt.Sprintf("We currently do not have sufficient %s capacity in the Availability Zone you requested (%s). "+
					"Our system will be working on provisioning additional capacity.", instanceType, availabilityZone),
			}
		}
	}
	count = min(count, max(c.opts.MaxInstances-active, 0))
	if count < minCount {
		return 0, clientError("InstanceLimitExceeded",
			"You have requested more instances (%d) than your current instance limit of %d allows.", minCount, c.opts.MaxInstances)
	}
	return count, nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] > 127 {
			return false
		}
	}
	return true
}

// instanceProfile reads IamInstanceProfile.Name/Arn and returns what DescribeInstances
// shows and the role the instance's credentials are for.
func instanceProfile(form url.Values) (*xmlProfile, string, *apiError) {
	name, arn := form.Get("IamInstanceProfile.Name"), form.Get("IamInstanceProfile.Arn")
	switch {
	case name == "" && arn == "":
		return nil, "", nil
	case name != "" && arn != "":
		return nil, "", clientError("InvalidParameterCombination", "The parameter 'iamInstanceProfile.name' may not be used in combination with 'iamInstanceProfile.arn'")
	case arn != "":
		if !strings.HasPrefix(arn, "arn:aws:iam::") || !strings.Contains(arn, ":instance-profile/") {
			return nil, "", invalidParameter("Value (%s) for parameter iamInstanceProfile.arn is invalid.", arn)
		}
		name = path.Base(arn)
	default:
		arn = "arn:aws:iam::" + ownerID + ":instance-profile/" + name
	}
	sum := sha256.Sum256([]byte(arn))
	id := "AIPA" + strings.ToUpper(hex.EncodeToString(sum[:]))[:17]
	return &xmlProfile{Arn: arn, ID: id}, name, nil
}

// tagSpecifications returns the tags of TagSpecification.N for resourceType, validating
// the others.
func tagSpecifications(form url.Values, resourceType string) (map[string]string, *apiError) {
	out := map[string]string{}
	for _, n := range queryform.Indices(form, "TagSpecification") {
		base := "TagSpecification." + strconv.Itoa(n)
		rt := form.Get(base + ".ResourceType")
		switch rt {
		case resourceType:
		case "volume", "network-interface", "spot-instances-request", "elastic-gpu":
			if resourceType == "instance" {
				continue
			}
			fallthrough
		default:
			return nil, invalidParameter("'%s' is not a valid taggable resource type for this operation.", rt)
		}
		for _, t := range formTags(form, base+".Tag") {
			if err := validateTag(t.Key, t.Value); err != nil {
				return nil, err
			}
			out[t.Key] = t.Value
		}
	}
	if len(out) > 50 {
		return nil, clientError("TagLimitExceeded", "The maximum number of Tags for a resource has been reached.")
	}
	return out, nil
}

func (c *Cloud) renderReservationLocked(id string, insts []*instance) xmlReservation {
	r := xmlReservation{ReservationID: id, OwnerID: ownerID}
	for _, inst := range insts {
		r.Instances = append(r.Instances, c.renderInstanceLocked(inst))
	}
	return r
}

func (c *Cloud) renderInstanceLocked(inst *instance) xmlInstance {
	x := xmlInstance{
		InstanceID:         inst.id,
		ImageID:            inst.imageID,
		State:              inst.state,
		Reason:             inst.reason,
		KeyName:            inst.keyName,
		AmiLaunchIndex:     inst.launchIndex,
		InstanceType:       inst.instanceType,
		LaunchTime:         formatTime(inst.launchTime),
		Placement:          xmlPlacement{AvailabilityZone: inst.zone, Tenancy: "default"},
		Monitoring:         xmlMonitoring{State: "disabled"},
		SubnetID:           inst.subnetID,
		VpcID:              inst.vpcID,
		StateReason:        inst.stateReason,
		Architecture:       "x86_64",
		RootDeviceType:     "ebs",
		RootDeviceName:     "/dev/xvda",
		VirtualizationType: "hvm",
		ClientToken:        inst.clientToken,
		Tags:               renderTags(inst.tags),
		Hypervisor:         "xen",
		IamInstanceProfile: inst.profile,
		PlatformDetails:    "Linux/UNIX",
		MetadataOptions:    inst.metadata.render(),
	}
	if inst.spot != nil {
		x.InstanceLifecycle = "spot"
		x.SpotInstanceRequestID = inst.spot.requestID
	}
	if inst.state != stateTerminated {
		x.PrivateIPAddress = inst.privateIP
		x.PrivateDNSName = "ip-" + strings.ReplaceAll(inst.privateIP, ".", "-") + ".ec2.internal"
	}
	x.Groups = c.network.renderGroups(inst.groups)
	c.attachmentsLocked(inst, &x)
	return x
}

// lookupInstancesLocked resolves InstanceId.N, failing like AWS on malformed or unknown ids.
func (c *Cloud) lookupInstancesLocked(ids []string) ([]*instance, *apiError) {
	var missing []string
	out := make([]*instance, 0, len(ids))
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if !instanceIDPattern.MatchString(id) {
			return nil, clientError("InvalidInstanceID.Malformed", "Invalid id: %q (expecting \"i-...\")", id)
		}
		if seen[id] {
			continue
		}
		seen[id] = true
		inst, ok := c.instances[id]
		if !ok {
			missing = append(missing, id)
			continue
		}
		out = append(out, inst)
	}
	switch len(missing) {
	case 0:
		return out, nil
	case 1:
		return nil, clientError("InvalidInstanceID.NotFound", "The instance ID '%s' does not exist", missing[0])
	default:
		return nil, clientError("InvalidInstanceID.NotFound", "The instance IDs '%s' do not exist", strings.Join(missing, ", "))
	}
}

func (c *Cloud) describeInstances(requestID string, form url.Values) (any, *apiError) {
	ids := queryform.List(form, "InstanceId")
	maxResults, err := intParam(form, "MaxResults", 0)
	if err != nil {
		return nil, err
	}
	paginated := form.Get("MaxResults") != ""
	if paginated && len(ids) > 0 {
		return nil, clientError("InvalidParameterCombination", "The parameter instancesSet cannot be used with the parameter maxResults")
	}
	if paginated && (maxResults < 5 || maxResults > 1000) {
		return nil, invalidParameter("Value (%d) for parameter maxResults is invalid. Expecting a value greater than 5.", maxResults)
	}
	start, err := decodeNextToken(form.Get("NextToken"))
	if err != nil {
		return nil, err
	}
	match, err := instanceFilter(filters(form))
	if err != nil {
		return nil, err
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	candidates := c.order
	if len(ids) > 0 {
		if candidates, err = c.lookupInstancesLocked(ids); err != nil {
			return nil, err
		}
	}
	resp := describeInstancesResponse{responseMeta: meta(requestID)}
	var page []*instance
	for _, inst := range candidates {
		if inst.seq < start || !match(inst) {
			continue
		}
		if paginated && len(page) == maxResults {
			resp.NextToken = encodeNextToken(inst.seq)
			break
		}
		page = append(page, inst)
	}
	for _, inst := range page {
		n := len(resp.Reservations)
		if n == 0 || resp.Reservations[n-1].ReservationID != inst.reservationID {
			resp.Reservations = append(resp.Reservations, xmlReservation{ReservationID: inst.reservationID, OwnerID: ownerID})
			n++
		}
		resp.Reservations[n-1].Instances = append(resp.Reservations[n-1].Instances, c.renderInstanceLocked(inst))
	}
	return resp, nil
}

// Pagination tokens carry the launch sequence number of the first instance of the next page.

func encodeNextToken(seq int) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(seq))
	return base64.RawURLEncoding.EncodeToString(append([]byte("lc1"), b[:]...))
}

func decodeNextToken(s string) (int, *apiError) {
	if s == "" {
		return 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != 11 || string(b[:3]) != "lc1" {
		return 0, invalidParameter("The parameter NextToken is not valid.")
	}
	return int(binary.BigEndian.Uint64(b[3:])), nil
}

func (c *Cloud) terminateInstances(requestID string, form url.Values) (any, *apiError) {
	ids := queryform.List(form, "InstanceId")
	if len(ids) == 0 {
		return nil, missingParameter("InstanceId")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	insts, err := c.lookupInstancesLocked(ids)
	if err != nil {
		return nil, err
	}
	if c.closed {
		return nil, &apiError{Status: http.StatusServiceUnavailable, Code: "Unavailable", Message: "The local cloud is shutting down."}
	}
	resp := terminateInstancesResponse{responseMeta: meta(requestID)}
	for _, inst := range insts {
		prev := inst.state
		c.terminateLocked(inst, userShutdown())
		resp.Changes = append(resp.Changes, xmlStateChange{InstanceID: inst.id, PreviousState: prev, CurrentState: inst.state})
	}
	return resp, nil
}

// termination is why an instance is terminated: its state reason and transition reason.
type termination struct {
	stateReason xmlStateReason
	reason      string
}

// userShutdown is a TerminateInstances call's (or anyone else's who terminates it).
func userShutdown() termination {
	return termination{
		stateReason: xmlStateReason{Code: "Client.UserInitiatedShutdown", Message: "Client.UserInitiatedShutdown: User initiated shutdown"},
		reason:      "User initiated (" + time.Now().UTC().Format("2006-01-02 15:04:05 MST") + ")",
	}
}

// spotInterruption is EC2's when it takes a spot instance back.
func spotInterruption() termination {
	return termination{
		stateReason: xmlStateReason{Code: "Server.SpotInstanceTermination", Message: "Server.SpotInstanceTermination: Spot instance termination"},
		reason:      "Service initiated (" + time.Now().UTC().Format("2006-01-02 15:04:05 MST") + ")",
	}
}

// terminateLocked moves a pending or running instance to shutting-down, sends the state
// change notice and starts the goroutine that closes its SSH host and finishes the
// termination.
func (c *Cloud) terminateLocked(inst *instance, why termination) {
	if inst.state != statePending && inst.state != stateRunning {
		return
	}
	inst.state = stateShuttingDown
	inst.stateReason = &why.stateReason
	inst.reason = why.reason
	close(inst.stop)
	c.stateNoticeLocked(inst)
	c.wg.Add(1)
	go c.shutdown(inst, time.Now().Add(max(c.opts.ShutdownDelay, 0)))
}

func (c *Cloud) getConsoleOutput(requestID string, form url.Values) (any, *apiError) {
	id := form.Get("InstanceId")
	if id == "" {
		return nil, missingParameter("InstanceId")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	insts, err := c.lookupInstancesLocked([]string{id})
	if err != nil {
		return nil, err
	}
	inst := insts[0]
	resp := getConsoleOutputResponse{responseMeta: meta(requestID), InstanceID: inst.id, Timestamp: formatTime(time.Now())}
	if inst.hostKey != nil {
		resp.Output = base64.StdEncoding.EncodeToString([]byte(consoleOutput(inst.privateIP, inst.launchTime, inst.hostKey)))
	}
	return resp, nil
}

// InstanceDir is the working directory of an instance's SSH host (it stays after
// termination, for inspection).
func (c *Cloud) InstanceDir(id string) string {
	return filepath.Join(c.dataDir, id)
}
