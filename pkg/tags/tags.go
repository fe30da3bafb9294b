// Package tags is Sortie's tag vocabulary: the keys of the tags it puts on instances,
// volumes, buckets, queues and topics, defined once and imported everywhere.
package tags

const (
	// Name is EC2's display name tag.
	Name = "Name"
	// Stack names the stack (its prefix) that owns a resource. Every read that leads to a
	// write filters on it: a stack never touches what another stack or a person owns.
	Stack = "sortie:stack"
	// JobID is the job an instance works for.
	JobID = "sortie:job-id"
	// Fleet is the fleet (job id and plan revision) an instance belongs to.
	Fleet = "sortie:fleet"
	// Template is the ops template a fleet was launched from (the sweep reads its user and TTL).
	Template = "sortie:template"
	// LeaseExpires is when the sweep may reap an instance (RFC 3339).
	LeaseExpires = "sortie:lease-expires"
	// Stage is the pipeline stage an instance has reached (launched, bootstrapped, finished).
	Stage = "sortie:stage"
	// CorrelationID is the correlation id of the event that launched an instance.
	CorrelationID = "sortie:correlation-id"
	// HostKeyNonce is the plan nonce an instance's derived host key was made with: a fleet
	// found again (a duplicate plan with another nonce, same ClientToken) is pinned with the
	// key its instances actually have.
	HostKeyNonce = "sortie:hostkey-nonce"
	// HostKey is the public half (authorized_keys format) of the host key the provisioner
	// derived for a fleet and installed through user data: what `sortie ssh` pins. Absent on
	// instances that make their own keys (read from their console output instead).
	HostKey = "sortie:host-key"
	// SSHEndpoint is the local cloud's loopback SSH address of an instance. It is honoured only
	// when local mode is switched on explicitly, never against AWS.
	SSHEndpoint = "sortie:ssh-endpoint"
	// Market is the market an instance was launched in: "spot" or "on-demand".
	Market = "sortie:market"
	// HourlyPrice is the capacity profile's price of an instance's type in its market, in
	// dollars an hour, when it was launched (pkg/cost formats and parses it).
	HourlyPrice = "sortie:hourly-price"
	// PlannedCost is the cost, in dollars, the plan of an instance's fleet estimated.
	PlannedCost = "sortie:planned-cost"
	// PlanRevision is the plan revision that launched the instance: 1, or the revision of
	// the replacement plan that replaced lost instances.
	PlanRevision = "sortie:plan-revision"
)
