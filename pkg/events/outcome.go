package events

// TaskReported is one task's result, reported from an instance, or (Kind ReportExited) the
// end of a start step's workload, reported by the step's wrapper the moment it exits. The
// monitor consumes it.
type TaskReported struct {
	Header
	FleetID    string `json:"fleet_id"`
	InstanceID string `json:"instance_id"`
	TaskID     string `json:"task_id"` // the workload's own name for the item; the start step's name for an exit
	Outcome    string `json:"outcome"` // OutcomeSucceeded or OutcomeFailed (an exit: succeeded iff ExitCode is 0)
	DurationMS int64  `json:"duration_ms"`
	Detail     string `json:"detail,omitempty"`
	// Kind is ReportTask (empty: one task's result) or ReportExited. Optional, added
	// within schema version 1: a consumer of an older build rejects the key, so the
	// monitor is deployed before the instances' sortie-worker that sends it.
	Kind string `json:"kind,omitempty"`
	// ExitCode is the workload's exit status, 0-255; required for ReportExited, absent
	// otherwise. Added within schema version 1, with Kind.
	ExitCode *int `json:"exit_code,omitempty"`
}

// TaskReported kinds.
const (
	ReportTask   = ""       // one task's result
	ReportExited = "exited" // a start step's workload ended
)

// Exited reports whether the report is a workload's exit rather than a task's result.
func (e TaskReported) Exited() bool { return e.Kind == ReportExited }

var _ Event = TaskReported{}

// EventType returns TypeTaskReported.
func (TaskReported) EventType() string { return TypeTaskReported }

// Validate reports every invalid field; the errors wrap ErrInvalid.
func (e TaskReported) Validate() error {
	var c checker
	e.Header.check(&c)
	c.fleetID("fleet_id", e.FleetID)
	c.instanceID("instance_id", e.InstanceID)
	c.printableText("task_id", e.TaskID, MaxTaskIDBytes)
	c.outcome("outcome", e.Outcome, OutcomeSucceeded, OutcomeFailed)
	c.durationMS("duration_ms", e.DurationMS)
	c.text("detail", e.Detail, MaxTextBytes, false)
	switch e.Kind {
	case ReportTask:
		if e.ExitCode != nil {
			c.fail("exit_code", "must be absent unless kind is %q", ReportExited)
		}
	case ReportExited:
		switch {
		case e.ExitCode == nil:
			c.fail("exit_code", "must be set when kind is %q", ReportExited)
		case *e.ExitCode < 0 || *e.ExitCode > 255:
			c.fail("exit_code", "must be between 0 and 255, got %d", *e.ExitCode)
		case (*e.ExitCode == 0) != (e.Outcome == OutcomeSucceeded):
			c.fail("outcome", "must be %s exactly when exit_code is 0, got %s with exit code %d", OutcomeSucceeded, quote(e.Outcome), *e.ExitCode)
		}
	default:
		c.fail("kind", "must be empty or %q, got %s", ReportExited, quote(e.Kind))
	}
	return c.err()
}

// JobFinished is the monitor's verdict on a job. The reaper consumes it: it archives the
// logs of Instances (over SSH, with HostKey and KeyName): .sortie and, when they exist,
// the paths in Logs; then it terminates them.
type JobFinished struct {
	Header
	FleetID  string `json:"fleet_id"`
	Template string `json:"template,omitempty"` // carried, optional
	Outcome  string `json:"outcome"`            // OutcomeSucceeded, OutcomeFailed, OutcomeTimedOut or OutcomeCancelled (schema version 1)
	// Reason explains the outcome; required unless the job succeeded.
	Reason          string        `json:"reason,omitempty"`
	FailingInstance string        `json:"failing_instance,omitempty"` // one of Instances
	LogTail         []string      `json:"log_tail,omitempty"`         // the failing log's last lines, oldest first
	Instances       []InstanceRef `json:"instances,omitempty"`        // every instance to archive and terminate
	HostKey         string        `json:"host_key,omitempty"`         // the fleet's derived key; empty for instance host keys (read from the console)
	KeyName         string        `json:"key_name,omitempty"`         // required when Instances is not empty
	Logs            []string      `json:"logs,omitempty"`             // workload logs outside .sortie, relative paths
	TasksSucceeded  int           `json:"tasks_succeeded"`
	TasksFailed     int           `json:"tasks_failed"`
}

// InstanceRef is how to reach one instance.
type InstanceRef struct {
	ID          string `json:"id"`
	SSHEndpoint string `json:"ssh_endpoint"`
	// HostKey is the instance's own host key to pin when it is not the event's HostKey (an
	// instance of a later plan revision). Optional: added in schema version 1.
	HostKey string `json:"host_key,omitempty"`
}

var _ Event = JobFinished{}

// EventType returns TypeJobFinished.
func (JobFinished) EventType() string { return TypeJobFinished }

// Validate reports every invalid field; the errors wrap ErrInvalid.
func (e JobFinished) Validate() error {
	var c checker
	e.Header.check(&c)
	c.fleetID("fleet_id", e.FleetID)
	c.optionalName("template", e.Template)
	c.outcome("outcome", e.Outcome, OutcomeSucceeded, OutcomeFailed, OutcomeTimedOut, OutcomeCancelled)
	c.text("reason", e.Reason, MaxTextBytes, e.Outcome != OutcomeSucceeded)
	c.lines("log_tail", e.LogTail)
	if c.count("instances", len(e.Instances), MaxInstances) {
		for i, in := range e.Instances {
			f := index("instances", i)
			c.instanceID(f+".id", in.ID)
			c.endpoint(f+".ssh_endpoint", in.SSHEndpoint)
			c.optionalHostKey(f+".host_key", in.HostKey)
		}
		c.uniqueIDs("instances", len(e.Instances), func(i int) string { return e.Instances[i].ID })
	}
	if e.FailingInstance != "" {
		found := false
		for _, in := range e.Instances {
			found = found || in.ID == e.FailingInstance
		}
		if !found {
			c.fail("failing_instance", "must be one of instances, got %s", quote(e.FailingInstance))
		}
	}
	if len(e.Instances) > 0 {
		c.optionalHostKey("host_key", e.HostKey)
		c.keyName("key_name", e.KeyName)
	} else {
		c.text("host_key", e.HostKey, MaxHostKeyBytes, false)
		c.text("key_name", e.KeyName, MaxKeyNameBytes, false)
	}
	if c.count("logs", len(e.Logs), MaxLogs) {
		for i, p := range e.Logs {
			c.relativePath(index("logs", i), p, MaxLogPathBytes)
		}
	}
	c.intRange("tasks_succeeded", int64(e.TasksSucceeded), 0, MaxItems)
	c.intRange("tasks_failed", int64(e.TasksFailed), 0, MaxItems)
	return c.err()
}

// FleetTerminated closes a job: its logs are archived and its instances are gone. No
// service consumes it; watchers (the CLI, upstream callbacks) do. It is every job's
// terminal event: a job that a stage rejects ends with a FleetTerminated whose outcome is
// OutcomeRejected, whose reason says why, and whose RejectedBy names the stage (then
// FleetID is the job id, and no instance is listed: instances a rejected job may have left
// are taken by the reaper's sweep when their lease expires).
//
// Schema version 1 added, as optional: outcome "rejected" and rejected_by. Consumers
// written before them (older CLI watchers) skip a rejected FleetTerminated as invalid,
// which leaves them where they were without it: waiting until their timeout.
type FleetTerminated struct {
	Header
	FleetID               string    `json:"fleet_id"`
	Outcome               string    `json:"outcome"`               // the job's, as in JobFinished, or OutcomeRejected
	Reason                string    `json:"reason,omitempty"`      // the job's, as in JobFinished; why it was rejected
	RejectedBy            string    `json:"rejected_by,omitempty"` // the service that rejected the job
	Archives              []Archive `json:"archives,omitempty"`
	TerminatedInstanceIDs []string  `json:"terminated_instance_ids,omitempty"`
	InstanceSeconds       float64   `json:"instance_seconds"` // summed lifetime of the fleet's instances
	// ArchiveFailures are the instances whose logs were not archived, and why; they were
	// terminated all the same. Added in schema version 1 (optional, absent when every
	// archive was stored).
	ArchiveFailures []ArchiveFailure `json:"archive_failures,omitempty"`
	// Refused are the instances JobFinished named (or EC2 listed for the fleet) that the
	// reaper did not touch: another fleet's, another stack's, untagged, or unknown to EC2.
	// Added in schema version 1 (optional, absent when nothing was refused).
	Refused []RefusedInstance `json:"refused,omitempty"`
	// Cost is what the fleet cost in dollars: each instance's seconds (60 s minimum) times
	// its type's hourly price in its market, from the capacity profile. PlannedCost is the
	// plan's estimate. Optional: added in schema version 1 (absent when unknown).
	Cost        float64 `json:"cost,omitempty"`
	PlannedCost float64 `json:"planned_cost,omitempty"`
}

// ArchiveFailure is an instance whose logs could not be archived before it was terminated.
// Added in schema version 1.
type ArchiveFailure struct {
	InstanceID string `json:"instance_id"`
	Error      string `json:"error"`
}

// Why the reaper refuses to act on an instance (RefusedInstance.Reason).
const (
	RefusedOtherFleet = "other-fleet" // its sortie:fleet tag names another fleet
	RefusedOtherStack = "other-stack" // its sortie:stack tag names another stack
	RefusedUntagged   = "untagged"    // it lacks sortie:fleet or sortie:stack
	RefusedUnknown    = "unknown"     // EC2 does not know it
)

// RefusedInstance is an instance the reaper neither archived nor terminated, and why.
// Added in schema version 1.
type RefusedInstance struct {
	InstanceID string `json:"instance_id"`
	Reason     string `json:"reason"`           // RefusedOtherFleet, RefusedOtherStack, RefusedUntagged or RefusedUnknown
	Detail     string `json:"detail,omitempty"` // what the tags said
}

// Archive is one instance's logs, uploaded to S3.
type Archive struct {
	InstanceID string `json:"instance_id"`
	Bucket     string `json:"bucket"`
	Key        string `json:"key"`
	SizeBytes  int64  `json:"size_bytes"`
}

var _ Event = FleetTerminated{}

// EventType returns TypeFleetTerminated.
func (FleetTerminated) EventType() string { return TypeFleetTerminated }

// Validate reports every invalid field; the errors wrap ErrInvalid.
func (e FleetTerminated) Validate() error {
	var c checker
	e.Header.check(&c)
	c.fleetID("fleet_id", e.FleetID)
	c.outcome("outcome", e.Outcome, OutcomeSucceeded, OutcomeFailed, OutcomeTimedOut, OutcomeRejected, OutcomeCancelled)
	c.text("reason", e.Reason, MaxTextBytes, e.Outcome == OutcomeRejected || e.Outcome == OutcomeCancelled)
	if e.RejectedBy != "" || e.Outcome == OutcomeRejected {
		c.name("rejected_by", e.RejectedBy)
	}
	if c.count("archives", len(e.Archives), MaxInstances) {
		for i, a := range e.Archives {
			f := index("archives", i)
			c.instanceID(f+".instance_id", a.InstanceID)
			c.bucket(f+".bucket", a.Bucket)
			c.text(f+".key", a.Key, MaxS3KeyBytes, true)
			c.intRange(f+".size_bytes", a.SizeBytes, 0, MaxArchiveBytes)
		}
	}
	if c.count("terminated_instance_ids", len(e.TerminatedInstanceIDs), MaxInstances) {
		for i, id := range e.TerminatedInstanceIDs {
			c.instanceID(index("terminated_instance_ids", i), id)
		}
		c.uniqueIDs("terminated_instance_ids", len(e.TerminatedInstanceIDs), func(i int) string { return e.TerminatedInstanceIDs[i] })
	}
	c.seconds("instance_seconds", e.InstanceSeconds, MaxInstanceSeconds)
	c.seconds("cost", e.Cost, MaxCost)
	c.seconds("planned_cost", e.PlannedCost, MaxCost)
	if c.count("archive_failures", len(e.ArchiveFailures), MaxInstances) {
		for i, a := range e.ArchiveFailures {
			f := index("archive_failures", i)
			c.instanceID(f+".instance_id", a.InstanceID)
			c.text(f+".error", a.Error, MaxTextBytes, true)
		}
		c.uniqueIDs("archive_failures", len(e.ArchiveFailures), func(i int) string { return e.ArchiveFailures[i].InstanceID })
	}
	if c.count("refused", len(e.Refused), MaxInstances) {
		for i, r := range e.Refused {
			f := index("refused", i)
			c.instanceID(f+".instance_id", r.InstanceID)
			c.outcome(f+".reason", r.Reason, RefusedOtherFleet, RefusedOtherStack, RefusedUntagged, RefusedUnknown)
			c.text(f+".detail", r.Detail, MaxTextBytes, false)
		}
		c.uniqueIDs("refused", len(e.Refused), func(i int) string { return e.Refused[i].InstanceID })
	}
	return c.err()
}
