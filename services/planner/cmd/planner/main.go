// Command planner runs Sortie's planner stage on its own (configuration from SORTIE_* and AWS_* variables).
package main

import (
	"context"
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/services/planner"
)

func main() {
	service.Main("planner", func(ctx context.Context, awsCfg aws.Config, logger *slog.Logger) error {
		cfg, err := planner.ConfigFromEnv()
		if err != nil {
			return err
		}
		deps, err := service.NewDeps(awsCfg, cfg.Base, logger)
		if err != nil {
			return err
		}
		defer deps.Publisher.Close()
		return planner.Run(ctx, cfg, deps)
	})
}
