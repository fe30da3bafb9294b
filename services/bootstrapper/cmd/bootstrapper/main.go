// Command bootstrapper runs Sortie's bootstrap stage alone (AWS_ENDPOINT_URL for the local cloud).
package main

import (
	"context"
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/services/bootstrapper"
)

func main() {
	service.Main("bootstrapper", func(ctx context.Context, awsCfg aws.Config, logger *slog.Logger) error {
		cfg, err := bootstrapper.ConfigFromEnv()
		if err != nil {
			return err
		}
		deps, err := service.NewDeps(awsCfg, cfg.Base, logger)
		if err != nil {
			return err
		}
		defer deps.Publisher.Close()
		return bootstrapper.Run(ctx, cfg, deps)
	})
}
