// Command monitor runs Sortie's monitor stage on its own (configuration from SORTIE_* and AWS_* variables).
package main

import (
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/services/monitor"
)

func main() { service.Serve("monitor", monitor.ConfigFromEnv, monitor.Run) }
