// Command bootstrapper runs Sortie's bootstrap stage alone (AWS_ENDPOINT_URL for the local cloud).
package main

import (
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/services/bootstrapper"
)

func main() { service.Serve("bootstrapper", bootstrapper.ConfigFromEnv, bootstrapper.Run) }
