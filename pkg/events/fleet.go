package events

import "time"

// FleetPlanned is the planner's sizing decision for a job. The provisioner consumes it.
type FleetPlanned struct {
	Header
	FleetID      string `json:"fleet_id"`
	PlanRevision int    `json:"plan_revision"` // 1, then +1 per replan: part of the launch's idempotency token

	// Carried from JobSubmitted.
	Template        string            `json:"template"`
	Profile         string            `json:"profile"`
	Recipe          string            `json:"recipe"`
	Params          map[string]string `json:"params,omitempty"`
	DeadlineSeconds int               `json:"deadline_seconds"`
	SubmittedAt     time.Time         `json:"submitted_at"`

	Items            int     `json:"items"` // work size as measured by the planner
	InstanceType     string  `json:"instance_type"`
	Count            int     `json:"count"`
	EstimatedSeconds float64 `json:"estimated_seconds"` // boot plus processing, as planned
	MeetsDeadline    bool    `json:"meets_deadline"`
	Rationale        string  `json:"rationale"` // the arithmetic, for humans

	// Nonce is a random value the planner draws for each plan (16-64 characters of
	// base64url), mixed into the fleet's derived SSH host key so that a job id reused by
	// another submission never gets the same key. Optional: added in schema version 1;
	// plans without one derive the key from the fleet and revision alone.
	Nonce string `json:"nonce,omitempty"`

	// PlannedCost is the plan's estimated cost in dollars (Count instances billed per
	// second, 60 s minimum, at the profile's on-demand price). Optional: added in schema
	// version 1.
	PlannedCost float64 `json:"planned_cost,omitempty"`
}

var _ Event = FleetPlanned{}

// EventType returns TypeFleetPlanned.
func (FleetPlanned) EventType() string { return TypeFleetPlanned }

// DeadlineAt returns the instant the job must be done by.
func (e FleetPlanned) DeadlineAt() time.Time {
	return e.SubmittedAt.Add(time.Duration(e.DeadlineSeconds) * time.Second)
}

// Validate reports every invalid field; the errors wrap ErrInvalid.
func (e FleetPlanned) Validate() error {
	var c checker
	e.Header.check(&c)
	c.fleetID("fleet_id", e.FleetID)
	c.intRange("plan_revision", int64(e.PlanRevision), 1, MaxPlanRevision)
	c.name("template", e.Template)
	c.name("profile", e.Profile)
	c.name("recipe", e.Recipe)
	c.params("params", e.Params)
	c.deadlineSeconds("deadline_seconds", e.DeadlineSeconds)
	c.time("submitted_at", e.SubmittedAt)
	c.intRange("items", int64(e.Items), 0, MaxItems)
	c.instanceType("instance_type", e.InstanceType)
	c.intRange("count", int64(e.Count), 1, MaxInstances)
	c.seconds("estimated_seconds", e.EstimatedSeconds, MaxEstimatedSeconds)
	c.text("rationale", e.Rationale, MaxTextBytes, true)
	c.nonce("nonce", e.Nonce)
	c.seconds("planned_cost", e.PlannedCost, MaxCost)
	return c.err()
}

// Revision returns the plan revision, 1 when the event carries none.
func (e FleetBootstrapped) Revision() int { return max(e.PlanRevision, 1) }

// FleetLaunched lists a fleet's running instances. The bootstrapper consumes it.
type FleetLaunched struct {
	Header
	FleetID      string `json:"fleet_id"`
	PlanRevision int    `json:"plan_revision"`

	// Carried from FleetPlanned. Template is optional.
	Template   string            `json:"template,omitempty"`
	Recipe     string            `json:"recipe"`
	Params     map[string]string `json:"params,omitempty"`
	DeadlineAt time.Time         `json:"deadline_at"`

	KeyName string `json:"key_name"` // the EC2 key pair the instances accept
	// HostKey is the fleet's derived SSH host public key, authorized_keys format. Empty
	// when the template's instances generate their own host keys (host_keys: instance),
	// read from each instance's console output instead (empty allowed since schema
	// version 1 gained instance host keys).
	HostKey   string     `json:"host_key"`
	Instances []Instance `json:"instances"`

	// PlannedInstanceType and PlannedCount are what FleetPlanned asked for; Instances are
	// what was launched, which differs when the provisioner fell back to another type
	// (re-sized for it) or market. Fallback says why and how, in words. Optional: added in
	// schema version 1.
	PlannedInstanceType string `json:"planned_instance_type,omitempty"`
	PlannedCount        int    `json:"planned_count,omitempty"`
	Fallback            string `json:"fallback,omitempty"`
}

// Instance is one launched instance. SSHEndpoint and PrivateIP are informational:
// consumers take the address to connect to from EC2's description of the instance.
type Instance struct {
	ID           string    `json:"id"`
	InstanceType string    `json:"instance_type"`
	PrivateIP    string    `json:"private_ip,omitempty"`
	SSHEndpoint  string    `json:"ssh_endpoint"` // host:port
	LaunchedAt   time.Time `json:"launched_at"`
	// Market is where the instance runs: "spot" or "on-demand". Optional: added in schema
	// version 1.
	Market string `json:"market,omitempty"`
	// HourlyPrice is the profile's price of the instance's type in its market, in dollars.
	// Optional: added in schema version 1.
	HourlyPrice float64 `json:"hourly_price,omitempty"`
}

// Markets an instance may run in.
const (
	MarketOnDemand = "on-demand"
	MarketSpot     = "spot"
)

var _ Event = FleetLaunched{}

// EventType returns TypeFleetLaunched.
func (FleetLaunched) EventType() string { return TypeFleetLaunched }

// Validate reports every invalid field; the errors wrap ErrInvalid.
func (e FleetLaunched) Validate() error {
	var c checker
	e.Header.check(&c)
	c.fleetID("fleet_id", e.FleetID)
	c.intRange("plan_revision", int64(e.PlanRevision), 1, MaxPlanRevision)
	c.optionalName("template", e.Template)
	c.name("recipe", e.Recipe)
	c.params("params", e.Params)
	c.time("deadline_at", e.DeadlineAt)
	c.keyName("key_name", e.KeyName)
	c.optionalHostKey("host_key", e.HostKey)
	if e.PlannedInstanceType != "" {
		c.instanceType("planned_instance_type", e.PlannedInstanceType)
	}
	c.intRange("planned_count", int64(e.PlannedCount), 0, MaxInstances)
	c.text("fallback", e.Fallback, MaxTextBytes, false)
	if len(e.Instances) == 0 {
		c.fail("instances", "must list at least one instance")
	} else if c.count("instances", len(e.Instances), MaxInstances) {
		for i, in := range e.Instances {
			f := index("instances", i)
			c.instanceID(f+".id", in.ID)
			c.instanceType(f+".instance_type", in.InstanceType)
			c.ip(f+".private_ip", in.PrivateIP)
			c.endpoint(f+".ssh_endpoint", in.SSHEndpoint)
			c.time(f+".launched_at", in.LaunchedAt)
			if in.Market != "" {
				c.outcome(f+".market", in.Market, MarketOnDemand, MarketSpot)
			}
			c.seconds(f+".hourly_price", in.HourlyPrice, MaxHourlyPrice)
		}
		c.uniqueIDs("instances", len(e.Instances), func(i int) string { return e.Instances[i].ID })
	}
	return c.err()
}

// FleetBootstrapped reports the recipe's result on every instance of a fleet. The monitor
// consumes it.
type FleetBootstrapped struct {
	Header
	FleetID string `json:"fleet_id"`
	// PlanRevision is the revision of the plan that launched these instances, carried from
	// FleetLaunched; revisions after 1 are replacements for lost instances. Optional: added
	// in schema version 1 (absent means 1).
	PlanRevision int `json:"plan_revision,omitempty"`

	// Carried from FleetLaunched. Template and Params are optional: the monitor renders
	// the recipe's start steps with Params to find their logs.
	Template   string            `json:"template,omitempty"`
	Recipe     string            `json:"recipe"`
	Params     map[string]string `json:"params,omitempty"`
	DeadlineAt time.Time         `json:"deadline_at"`
	HostKey    string            `json:"host_key"` // as in FleetLaunched: empty for instance host keys
	KeyName    string            `json:"key_name"`

	Instances []InstanceResult `json:"instances"`
}

// InstanceResult is the recipe's result on one instance. OK is true when every step
// succeeded and the workload started; otherwise Error says why.
type InstanceResult struct {
	ID          string `json:"id"`
	SSHEndpoint string `json:"ssh_endpoint"`
	// HostKey is the instance's own host key to pin (authorized_keys format) when it is not
	// the event's HostKey: the monitor sets it on the instances of a later plan revision it
	// watches together with the first. Optional: added in schema version 1.
	HostKey string       `json:"host_key,omitempty"`
	OK      bool         `json:"ok"`
	Error   string       `json:"error,omitempty"`
	Steps   []StepResult `json:"steps,omitempty"`
}

// StepResult is one recipe step on one instance. ExitCode is -1 when the step did not
// exit normally (not run, killed by a signal, connection lost).
type StepResult struct {
	Name       string   `json:"name"`
	ExitCode   int      `json:"exit_code"`
	DurationMS int64    `json:"duration_ms"`
	OutputTail []string `json:"output_tail,omitempty"` // last lines of output, oldest first
}

var _ Event = FleetBootstrapped{}

// EventType returns TypeFleetBootstrapped.
func (FleetBootstrapped) EventType() string { return TypeFleetBootstrapped }

// Validate reports every invalid field; the errors wrap ErrInvalid.
func (e FleetBootstrapped) Validate() error {
	var c checker
	e.Header.check(&c)
	c.fleetID("fleet_id", e.FleetID)
	c.optionalName("template", e.Template)
	c.name("recipe", e.Recipe)
	c.params("params", e.Params)
	c.time("deadline_at", e.DeadlineAt)
	c.optionalHostKey("host_key", e.HostKey)
	c.keyName("key_name", e.KeyName)
	c.intRange("plan_revision", int64(e.PlanRevision), 0, MaxPlanRevision)
	if len(e.Instances) == 0 {
		c.fail("instances", "must list at least one instance")
	} else if c.count("instances", len(e.Instances), MaxInstances) {
		for i, in := range e.Instances {
			in.check(&c, index("instances", i))
		}
		c.uniqueIDs("instances", len(e.Instances), func(i int) string { return e.Instances[i].ID })
	}
	return c.err()
}

func (r InstanceResult) check(c *checker, field string) {
	c.instanceID(field+".id", r.ID)
	c.endpoint(field+".ssh_endpoint", r.SSHEndpoint)
	c.optionalHostKey(field+".host_key", r.HostKey)
	switch {
	case r.OK && r.Error != "":
		c.fail(field+".error", "must be empty when ok is true, got %s", quote(r.Error))
	case !r.OK && r.Error == "":
		c.fail(field+".error", "must say why when ok is false")
	default:
		c.text(field+".error", r.Error, MaxTextBytes, false)
	}
	if !c.count(field+".steps", len(r.Steps), MaxSteps) {
		return
	}
	for i, s := range r.Steps {
		f := index(field+".steps", i)
		c.printableText(f+".name", s.Name, MaxStepNameBytes)
		c.intRange(f+".exit_code", int64(s.ExitCode), -1, 255)
		c.durationMS(f+".duration_ms", s.DurationMS)
		c.lines(f+".output_tail", s.OutputTail)
	}
}
