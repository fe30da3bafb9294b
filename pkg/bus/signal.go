package bus

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// SignalContext returns a context cancelled on SIGTERM (what ECS sends before it stops a
// task) or SIGINT, for every service's main:
//
//	ctx, stop := bus.SignalContext(context.Background())
//	defer stop()
//	return router.Run(ctx)
//
// Until stop is called the signals stay caught; stop restores their default behaviour.
func SignalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
}
