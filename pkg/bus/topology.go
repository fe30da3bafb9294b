package bus

import (
	"fmt"
	"regexp"
	"strings"
)

// Service names: the five stages and the operator CLI.
const (
	Planner      = "planner"
	Provisioner  = "provisioner"
	Bootstrapper = "bootstrapper"
	Monitor      = "monitor"
	Reaper       = "reaper"
)

// Event type names, one SNS topic each. They match the Type constants in pkg/events.
const (
	JobSubmitted      = "JobSubmitted"
	FleetPlanned      = "FleetPlanned"
	FleetLaunched     = "FleetLaunched"
	FleetBootstrapped = "FleetBootstrapped"
	TaskReported      = "TaskReported"
	JobFinished       = "JobFinished"
	FleetTerminated   = "FleetTerminated"
	InstanceLost      = "InstanceLost"
)

// EventTypes lists every event type in pipeline order.
var EventTypes = []string{
	JobSubmitted, FleetPlanned, FleetLaunched, FleetBootstrapped, TaskReported, JobFinished, FleetTerminated,
	InstanceLost,
}

// Consumers maps each event type to the services that consume it; each pair gets its own
// SQS queue subscribed to the type's topic. FleetTerminated has no service consumer: watchers
// (the CLI, upstream callbacks) subscribe queues of their own.
var Consumers = map[string][]string{
	JobSubmitted:      {Planner},
	FleetPlanned:      {Provisioner},
	FleetLaunched:     {Bootstrapper},
	FleetBootstrapped: {Monitor},
	TaskReported:      {Monitor},
	JobFinished:       {Reaper},
	// An instance of a running fleet was interrupted or lost: the reaper archives its
	// logs while it can, the planner replans the remaining work.
	InstanceLost: {Planner, Reaper},
}

// TimerServices are the services that send themselves delayed messages (timers) on a
// queue of their own.
var TimerServices = []string{Monitor, Reaper}

// MaxReceiveCount is the redrive policy's receive limit before a message goes to its DLQ.
const MaxReceiveCount = 5

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,19}$`)

// Topology names every SNS topic, SQS queue and DLQ of one Sortie stack. Prefix separates
// stacks sharing an account (and tests sharing one emulator).
type Topology struct {
	Prefix string
}

// Validate reports a prefix that would make invalid or over-long resource names.
func (t Topology) Validate() error {
	if !prefixRE.MatchString(t.Prefix) {
		return fmt.Errorf("topology prefix %q: want 1-20 characters of [a-z0-9-], starting with a letter", t.Prefix)
	}
	return nil
}

// kebab turns "FleetBootstrapped" into "fleet-bootstrapped".
func kebab(s string) string {
	var b strings.Builder
	for i, r := range s {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('-')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// TopicName is the SNS topic of an event type, e.g. "sortie-job-submitted".
func (t Topology) TopicName(eventType string) string {
	return t.Prefix + "-" + kebab(eventType)
}

// QueueName is the SQS queue through which service consumes eventType,
// e.g. "sortie-planner-job-submitted".
func (t Topology) QueueName(service, eventType string) string {
	return t.Prefix + "-" + service + "-" + kebab(eventType)
}

// TimerQueueName is the queue a service sends its own delayed messages to.
func (t Topology) TimerQueueName(service string) string {
	return t.Prefix + "-" + service + "-timers"
}

// DLQName is the dead-letter queue of a queue.
func DLQName(queue string) string { return queue + "-dlq" }

// BucketName is the log archive bucket.
func (t Topology) BucketName() string { return t.Prefix + "-logs" }

// Subscription is one (topic, consuming service) pair and its queue.
type Subscription struct {
	EventType string
	Service   string
	Topic     string
	Queue     string
	DLQ       string
}

// Subscriptions lists every topic→queue subscription of the stack in a stable order.
func (t Topology) Subscriptions() []Subscription {
	var out []Subscription
	for _, et := range EventTypes {
		for _, svc := range Consumers[et] {
			q := t.QueueName(svc, et)
			out = append(out, Subscription{EventType: et, Service: svc, Topic: t.TopicName(et), Queue: q, DLQ: DLQName(q)})
		}
	}
	return out
}

// ServiceQueues lists the queues a service reads: one per consumed event type, plus its
// timer queue when it has one.
func (t Topology) ServiceQueues(service string) []string {
	var out []string
	for _, s := range t.Subscriptions() {
		if s.Service == service {
			out = append(out, s.Queue)
		}
	}
	for _, ts := range TimerServices {
		if ts == service {
			out = append(out, t.TimerQueueName(service))
		}
	}
	return out
}

// The stack's other resource names, generated here once: the Terraform, `sortie infra up`,
// the services' defaults and `sortie audit` all use these (a test compares them).

// SecretsBucketName is the bucket holding the stack's secrets (the login key): SSE-KMS,
// TLS-only, and never fetchable by a recipe.
func (t Topology) SecretsBucketName() string { return t.Prefix + "-secrets" }

// LoginKeyObject is the key, in SecretsBucketName, of the private half of the key pair
// named keyName: the instances' login key the services read (SORTIE_SSH_KEY).
func (t Topology) LoginKeyObject(keyName string) string { return "keys/" + keyName + ".pem" }

// LoginKey is SORTIE_SSH_KEY's value for the key pair named keyName: s3://<prefix>-secrets/keys/<name>.pem.
func (t Topology) LoginKey(keyName string) string {
	return "s3://" + t.SecretsBucketName() + "/" + t.LoginKeyObject(keyName)
}

// LedgerTableName is the DynamoDB table of the job ledger.
func (t Topology) LedgerTableName() string { return t.Prefix + "-ledger" }

// HostKeySecretName is the Secrets Manager secret holding SORTIE_HOSTKEY_SECRET.
func (t Topology) HostKeySecretName() string { return t.Prefix + "/hostkey-secret" }

// RoleName is the IAM task role of a service (one of the five stages).
func (t Topology) RoleName(service string) string { return t.Prefix + "-" + service }

// WorkerRoleName is the IAM role (and instance profile) of the fleet's instances: it may
// publish TaskReported and read what its recipes fetch, nothing else.
func (t Topology) WorkerRoleName() string { return t.Prefix + "-worker" }

// UpstreamRoleName is the IAM role upstream assumes to publish JobSubmitted.
func (t Topology) UpstreamRoleName() string { return t.Prefix + "-upstream" }

// ExecutionRoleName is the ECS task execution role (image pulls, logs, the secret).
func (t Topology) ExecutionRoleName() string { return t.Prefix + "-execution" }

// ClusterName is the ECS cluster running the five services.
func (t Topology) ClusterName() string { return t.Prefix }

// LogGroupName is the CloudWatch Logs group of a service's ECS tasks.
func (t Topology) LogGroupName(service string) string { return "/" + t.Prefix + "/" + service }

// EC2EventsQueueName is the SQS queue EventBridge delivers EC2's notices to (Spot Instance
// Interruption Warnings and instance state changes) through the rule EC2EventsRuleName; the
// monitor reads it. Its DLQ is DLQName of it.
func (t Topology) EC2EventsQueueName() string { return t.Prefix + "-ec2-events" }

// EC2EventsRuleName is the EventBridge rule (default event bus) routing EC2's notices to
// EC2EventsQueueName.
func (t Topology) EC2EventsRuleName() string { return t.Prefix + "-ec2-events" }

// Producers that are not services: the upstream role (UpstreamRoleName) and the fleet's
// instances (WorkerRoleName).
const (
	UpstreamProducer = "upstream"
	WorkerProducer   = "worker"
)

// Producers maps each event type to the services allowed to publish it; UpstreamProducer
// stands for the upstream role (JobSubmitted) and WorkerProducer for the worker instance
// profile (TaskReported).
var Producers = map[string][]string{
	JobSubmitted:      {UpstreamProducer},
	FleetPlanned:      {Planner},
	FleetLaunched:     {Provisioner},
	FleetBootstrapped: {Bootstrapper},
	TaskReported:      {WorkerProducer},
	JobFinished:       {Monitor},
	InstanceLost:      {Monitor},
	// The reaper ends every job it reaps; any stage ends a job it rejects (outcome
	// rejected: see events.FleetTerminated and ledger.Rejecter).
	FleetTerminated: {Reaper, Planner, Provisioner, Bootstrapper, Monitor},
}
