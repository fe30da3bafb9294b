// Package bus carries Sortie's events over SNS topics and SQS queues with watermill:
// resource naming, publisher, subscriber, the shared middleware stack, DLQ and timers.
//
// A service's main wires it like this:
//
//	ctx, stop := bus.SignalContext(context.Background())
//	defer stop()
//	cfg, err := awsx.Load(ctx, bus.Monitor)
//	...
//	pub, err := bus.NewPublisher(bus.PublisherConfig{Topology: topo, AWS: cfg, Logger: logger})
//	r, err := bus.NewRouter(bus.Config{Topology: topo, Service: bus.Monitor, AWS: cfg, Logger: logger})
//	r.Handle(bus.TaskReported, func(ctx context.Context, m *bus.Message) error {
//		ev, err := events.DecodeTaskReported(m.Payload) // invalid input: ErrInvalid → DLQ
//		if err != nil {
//			return err
//		}
//		bus.Logger(ctx).Info("task reported", "fleet_id", ev.FleetID, "outcome", ev.Outcome)
//		// decide; publish the next event (pub.Publish), or look again later:
//		return pub.After(ctx, bus.Monitor, 30*time.Second, []byte(ev.FleetID), nil)
//	})
//	r.HandleTimers(checkFleet)
//	return r.Run(ctx) // until SIGTERM, then drains
//
// Every message goes through one middleware stack: correlation id (ids into the context
// and its logger) → poison (a permanent error sends the message to its queue's DLQ at
// once, with the reason in sortie_error) → retry with exponential backoff → panic
// recovery. A message still failing after the retries is left to SQS, which redelivers
// it and, after MaxReceiveCount deliveries, dead-letters it.
//
// While a message is being handled, from its receipt until it is acknowledged or
// nacked, a heartbeat keeps it hidden from the other replicas: every third of the
// queue's VisibilityTimeout (read from the queue at start-up) it resets the message's
// visibility timeout with ChangeMessageVisibility, so handlers may outlast the timeout
// without SQS delivering the message again. The heartbeat stops on ack (the message is
// then deleted), on nack (SQS redelivers the message once what is left of its visibility
// timeout has passed) and on a shutdown's hard stop, and after Config.MaxHandle (15 min)
// since the receipt: a stuck handler is logged with its job and correlation ids and
// its message is delivered again.
//
// Nothing here creates a topic or queue: `sortie infra up` (pkg/infra) or the IaC in
// deployments/ does. A missing one is reported as a *MissingError naming it; with
// Config.AwaitQueues a router waits for its queues instead, reporting them to its
// Observer (pkg/telemetry's /readyz), which also sees every delivery's outcome, duration
// and age for the service's metrics.
package bus
