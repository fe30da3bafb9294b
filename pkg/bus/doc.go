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
// Nothing here creates a topic or queue: `sortie infra up` (pkg/infra) or the IaC in
// deployments/ does. A missing one is reported as a *MissingError naming it.
package bus
