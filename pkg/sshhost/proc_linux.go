package sshhost

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// groupRunning reports whether process group pgid still has a member that is
// not a zombie. Detached children are reparented to init, which may be slow
// (or, in some containers, never) to reap them, so a group of zombies counts
// as gone. Zombies this process is the parent of (when it runs as PID 1 or as
// a child subreaper) are reaped here. Command shells themselves are reaped by
// os/exec before Close polls, so they are never waited for twice.
func groupRunning(pgid int) bool {
	if err := syscall.Kill(-pgid, 0); err != nil {
		return false // ESRCH: empty; EPERM: nothing left we could signal anyway
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	self := os.Getpid()
	running := false
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		state, ppid, pgrp, ok := parseStat(b)
		if !ok || pgrp != pgid {
			continue
		}
		if state == 'Z' || state == 'X' {
			if ppid == self && pid != pgid {
				var ws syscall.WaitStatus
				_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
			}
			continue
		}
		running = true
	}
	return running
}

// parseStat extracts state, ppid and pgrp from /proc/PID/stat, whose second
// field (the command name, in parentheses) may itself hold spaces and ')'.
func parseStat(b []byte) (state byte, ppid, pgrp int, ok bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 3 || len(f[0]) != 1 {
		return 0, 0, 0, false
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	pgrp, err2 := strconv.Atoi(string(f[2]))
	if err1 != nil || err2 != nil {
		return 0, 0, 0, false
	}
	return f[0][0], ppid, pgrp, true
}
