// Package bus carries Sortie's events over SNS topics and SQS queues with watermill:
// resource naming, publisher, subscriber, the shared middleware stack, DLQ and timers.
package bus
