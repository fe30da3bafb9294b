package events

import "time"

// InstanceLost says that an instance of a running fleet is being taken away (a Spot
// Instance Interruption Warning: EC2 reclaims it at NoticeDeadline) or is gone (it was
// terminated or stopped by anyone but Sortie) before its workloads finished. The monitor
// publishes it once per instance, having checked the instance is this stack's and the
// fleet's; the reaper archives the instance's logs while it still runs, and the planner
// replans the remaining work (a FleetPlanned with the next plan revision). Added in schema
// version 1: a new type, so no consumer of an older build receives it.
type InstanceLost struct {
	Header
	FleetID      string `json:"fleet_id"`
	PlanRevision int    `json:"plan_revision"` // the revision that launched the instance
	InstanceID   string `json:"instance_id"`
	Cause        string `json:"cause"` // one of the Lost* causes
	// NoticeDeadline is when EC2 takes a spot instance away (the warning's time plus two
	// minutes); zero for an instance already gone.
	NoticeDeadline time.Time `json:"notice_deadline,omitzero"`
	Detail         string    `json:"detail,omitempty"` // what EC2 said, for humans

	// Carried from the fleet's FleetBootstrapped, so the reaper can archive the instance
	// like it archives a finished fleet's: over SSH as the template's user, pinning
	// HostKey (empty: the key the instance printed to its console), taking .sortie and Logs.
	Template string   `json:"template,omitempty"`
	HostKey  string   `json:"host_key,omitempty"`
	KeyName  string   `json:"key_name"`
	Logs     []string `json:"logs,omitempty"`
}

// Causes of an InstanceLost.
const (
	LostSpotInterruption = "spot-interruption" // the two-minute warning: the instance still runs
	LostTerminated       = "terminated"        // shutting down or terminated by someone else
	LostStopped          = "stopped"           // stopping or stopped
)

var _ Event = InstanceLost{}

// EventType returns TypeInstanceLost.
func (InstanceLost) EventType() string { return TypeInstanceLost }

// Validate reports every invalid field; the errors wrap ErrInvalid.
func (e InstanceLost) Validate() error {
	var c checker
	e.Header.check(&c)
	c.fleetID("fleet_id", e.FleetID)
	c.intRange("plan_revision", int64(e.PlanRevision), 1, MaxPlanRevision)
	c.instanceID("instance_id", e.InstanceID)
	c.outcome("cause", e.Cause, LostSpotInterruption, LostTerminated, LostStopped)
	if !e.NoticeDeadline.IsZero() {
		c.time("notice_deadline", e.NoticeDeadline)
	}
	c.text("detail", e.Detail, MaxTextBytes, false)
	c.optionalName("template", e.Template)
	c.optionalHostKey("host_key", e.HostKey)
	c.keyName("key_name", e.KeyName)
	if c.count("logs", len(e.Logs), MaxLogs) {
		for i, p := range e.Logs {
			c.relativePath(index("logs", i), p, MaxLogPathBytes)
		}
	}
	return c.err()
}
