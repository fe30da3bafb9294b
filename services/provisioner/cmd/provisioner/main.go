// Command provisioner runs Sortie's provisioner stage on its own (configuration from SORTIE_* and AWS_* variables).
package main

import (
	"github.com/sortie-fleet/sortie/pkg/service"
	"github.com/sortie-fleet/sortie/services/provisioner"
)

func main() { service.Serve("provisioner", provisioner.ConfigFromEnv, provisioner.Run) }
