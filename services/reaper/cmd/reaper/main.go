// Command reaper runs Sortie's reaper stage alone (AWS_ENDPOINT_URL for the local cloud).
package main

import (
	"context"
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/services/reaper"
)

func main() {
	service.Main("reaper", func(ctx context.Context, awsCfg aws.Config, logger *slog.Logger) error {
		cfg, err := reaper.ConfigFromEnv()
		if err != nil {
			return err
		}
		deps, err := service.NewDeps(awsCfg, cfg.Base, logger)
		if err != nil {
			return err
		}
		defer deps.Publisher.Close()
		return reaper.Run(ctx, cfg, deps)
	})
}
