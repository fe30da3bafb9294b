// Command planner runs Sortie's planner stage on its own (configuration from SORTIE_* and AWS_* variables).
package main

import (
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/services/planner"
)

func main() { service.Serve("planner", planner.ConfigFromEnv, planner.Run) }
