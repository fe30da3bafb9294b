package events

import "time"

// Event type names. They match pkg/bus's topic names.
const (
	TypeJobSubmitted      = "JobSubmitted"
	TypeFleetPlanned      = "FleetPlanned"
	TypeFleetLaunched     = "FleetLaunched"
	TypeFleetBootstrapped = "FleetBootstrapped"
	TypeTaskReported      = "TaskReported"
	TypeJobFinished       = "JobFinished"
	TypeFleetTerminated   = "FleetTerminated"
	TypeInstanceLost      = "InstanceLost"
)

// Types lists every event type in pipeline order.
var Types = []string{
	TypeJobSubmitted, TypeFleetPlanned, TypeFleetLaunched, TypeFleetBootstrapped,
	TypeTaskReported, TypeJobFinished, TypeFleetTerminated, TypeInstanceLost,
}

// Outcomes of a task (succeeded, failed) and of a job (any of the three, or rejected).
const (
	OutcomeSucceeded = "succeeded"
	OutcomeFailed    = "failed"
	OutcomeTimedOut  = "timed_out"
	// OutcomeRejected ends a job that a stage refused (invalid, unknown names, a reused
	// job id, a permanent error, retries exhausted): only FleetTerminated carries it.
	OutcomeRejected = "rejected"
	// OutcomeCancelled ends a job an operator cancelled (`sortie cancel`): JobFinished
	// and FleetTerminated carry it. Added in schema version 1 (an optional value):
	// consumers written before it skip such an event as invalid.
	OutcomeCancelled = "cancelled"
)

// Limits enforced by Validate. They bound what one message may ask for or carry.
const (
	MaxBodyBytes = 256 << 10 // an encoded event, SNS's message size limit

	MaxInstances    = 1000                // instances in one fleet
	MaxItems        = 10_000_000          // work items of one job, and task counters
	MaxDeadline     = 7 * 24 * time.Hour  // a job's deadline
	MaxDuration     = 31 * 24 * time.Hour // a reported task or step duration
	MaxPlanRevision = 1000                // replans of one job

	// MaxEstimatedSeconds bounds a plan's estimate (ten years: a plan that does not meet
	// its deadline still says by how much).
	MaxEstimatedSeconds = 10 * 365 * 24 * 3600.0
	// MaxInstanceSeconds bounds a fleet's billed instance-seconds: MaxInstances for a year.
	MaxInstanceSeconds = MaxInstances * 365 * 24 * 3600.0
	MaxArchiveBytes    = 5 << 40 // S3's object size limit
	// MaxHourlyPrice bounds an instance's price in dollars an hour (pkg/sizing's bound).
	MaxHourlyPrice = 1e6
	// MaxCost bounds a fleet's cost in dollars: MaxInstanceSeconds at MaxHourlyPrice.
	MaxCost = MaxInstanceSeconds / 3600 * MaxHourlyPrice

	MaxParams             = 64      // recipe parameters of one job
	MaxParamValueBytes    = 4 << 10 // one recipe parameter value
	MaxTextBytes          = 4 << 10 // free text: rationale, reason, detail, error, one output line
	MaxTailLines          = 50      // lines of a log or output tail
	MaxSteps              = 64      // recipe steps reported for one instance
	MaxCorrelationIDBytes = 128     // bytes of a correlation id
	MaxTaskIDBytes        = 256     // bytes of a task id
	MaxKeyNameBytes       = 255     // an EC2 key pair name
	MaxHostKeyBytes       = 16 << 10
	MaxS3KeyBytes         = 1024 // an S3 object key or prefix
	MaxStepNameBytes      = 128
	MaxLogs               = 32   // log paths of one JobFinished
	MaxLogPathBytes       = 1024 // one log path
)

// Times outside [minTime, maxTime) are rejected: they are zero values, garbage, or would
// not survive a JSON round trip.
var (
	minTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTime = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)
