// Command monitor runs Sortie's monitor stage on its own (configuration from SORTIE_* and AWS_* variables).
package main

import (
	"context"
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/services/monitor"
)

func main() {
	service.Main("monitor", func(ctx context.Context, awsCfg aws.Config, logger *slog.Logger) error {
		cfg, err := monitor.ConfigFromEnv()
		if err != nil {
			return err
		}
		deps, err := service.NewDeps(awsCfg, cfg.Base, logger)
		if err != nil {
			return err
		}
		defer deps.Publisher.Close()
		return monitor.Run(ctx, cfg, deps)
	})
}
