package main

import (
	"path/filepath"
	"strings"
)

// workerName is the name instances know the demo worker by: `sortie` invoked under it
// (a symlink sortie-worker → sortie, as `task build` makes) is `sortie worker`.
const workerName = "sortie-worker"

// cliArgs are the arguments to parse for the command line argv: argv[1:], behind "worker"
// when the program was invoked as sortie-worker.
func cliArgs(argv []string) []string {
	if len(argv) == 0 {
		return nil
	}
	if strings.TrimSuffix(filepath.Base(argv[0]), ".exe") == workerName {
		return append([]string{"worker"}, argv[1:]...)
	}
	return argv[1:]
}
