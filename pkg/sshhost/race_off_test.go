//go:build !race

package sshhost_test

const raceEnabled = false
