package planner

import (
	"fmt"

	"github.com/sortie-fleet/sortie/pkg/service"
)

// Config is the planner's configuration. The planner needs nothing beyond the base: its
// decisions come from the ops config (templates, profiles, recipes) and the job.
type Config struct {
	service.Base
}

// ConfigFromEnv reads the configuration from SORTIE_* variables and validates it.
func ConfigFromEnv() (Config, error) {
	cfg := Config{Base: service.BaseFromEnv()}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	if err := c.Base.Validate(); err != nil {
		return fmt.Errorf("planner config: %w", err)
	}
	return nil
}
