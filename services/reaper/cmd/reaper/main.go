// Command reaper runs Sortie's reaper stage alone (AWS_ENDPOINT_URL for the local cloud).
package main

import (
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/services/reaper"
)

func main() { service.Serve("reaper", reaper.ConfigFromEnv, reaper.Run) }
