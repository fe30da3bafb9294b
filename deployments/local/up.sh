#!/usr/bin/env bash
# up.sh runs Sortie as separate processes on one machine, with the outcome of `sortie dev`:
# `sortie localcloud`, `sortie infra up`, `sortie demo prepare`, the five services, then
# `sortie demo submit --watch`. On exit it stops every process it started.
#
# Usage: deployments/local/up.sh [BIN_DIR]
#   BIN_DIR  prebuilt binaries: sortie, sortie-worker (a symlink to sortie), planner,
#            provisioner, bootstrapper, monitor, reaper. Default: build them into ./bin.
# Environment:
#   PORT            the local cloud's port on 127.0.0.1 (default 4566)
#   SORTIE_PREFIX   the stack's name prefix (default sortie)
#   SORTIE_RUN_DIR  where the logs, the instances' directories and the pids file go
#                   (default: a new directory under $TMPDIR)
#   DEMO_TIMEOUT    how long the demo job may take (default 2m)
#   REPLICAS        instances of every service (default 1): NAME, NAME-2, NAME-3, ... each
#                   its own process with its own log, competing for the same queues
#   SORTIE_HTTP_ADDR  where every service serves /healthz, /readyz and /metrics
#                   (default 127.0.0.1:0: a free port each, printed once they listen)
# Exit status: the demo's (0 when the job succeeded).
# shellcheck disable=SC2317 # cleanup and stop run from traps, which shellcheck cannot see
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
services=(planner provisioner bootstrapper monitor reaper)
port=${PORT:-4566}
export SORTIE_PREFIX=${SORTIE_PREFIX:-sortie}
export SORTIE_LOCAL_MODE=1 # the local cloud: honour its sortie:ssh-endpoint tags
# Five services on one machine: one port each, not the services' default :8080.
export SORTIE_HTTP_ADDR=${SORTIE_HTTP_ADDR:-127.0.0.1:0}
run_dir=${SORTIE_RUN_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/sortie-up.XXXXXX")}
mkdir -p "$run_dir"
run_dir=$(cd "$run_dir" && pwd)

say() { printf 'up: %s\n' "$*"; }
die() {
	printf 'up: %s\n' "$*" >&2
	exit 1
}

# now_ms is the time in milliseconds (bash 5's EPOCHREALTIME; whole seconds before it).
now_ms() {
	if [[ -n ${EPOCHREALTIME:-} ]]; then
		local t=${EPOCHREALTIME//[!0-9]/}
		echo $((10#$t / 1000))
	else
		echo $(($(date +%s) * 1000))
	fi
}

names=()
pids=()
submit_pid=

# start NAME CMD...: runs CMD in the background, output to $run_dir/NAME.log, and records
# its pid (in $run_dir/pids too, one "NAME PID" a line).
replicas=${REPLICAS:-1}
[[ $replicas =~ ^[1-9][0-9]*$ ]] || {
	printf 'up: REPLICAS=%s: want a whole number >= 1\n' "$replicas" >&2
	exit 1
}

# start_service NAME CMD...: REPLICAS processes of a service (NAME, NAME-2, ...).
start_service() {
	local name=$1 r
	shift
	start "$name" "$@"
	for ((r = 2; r <= replicas; r++)); do
		start "$name-$r" "$@"
	done
}

start() {
	local name=$1
	shift
	"$@" >"$run_dir/$name.log" 2>&1 &
	names+=("$name")
	pids+=("$!")
	printf '%s %s\n' "$name" "$!" >>"$run_dir/pids"
}

# stop PID...: SIGTERM, up to 15 s to exit, then SIGKILL; reaps them.
stop() {
	local pid left
	for pid in "$@"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for _ in $(seq 150); do
		left=0
		for pid in "$@"; do
			if kill -0 "$pid" 2>/dev/null; then left=1; fi
		done
		((left)) || break
		sleep 0.1
	done
	for pid in "$@"; do
		if kill -0 "$pid" 2>/dev/null; then
			printf 'up: pid %s still running 15 s after SIGTERM: SIGKILL\n' "$pid" >&2
			kill -KILL "$pid" 2>/dev/null || true
		fi
		wait "$pid" 2>/dev/null || true
	done
}

# cleanup stops the services first (draining their in-flight messages), then the local
# cloud, which terminates every instance still running.
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ -n $submit_pid ]]; then stop "$submit_pid"; fi
	if ((${#pids[@]} > 1)); then stop "${pids[@]:1}"; fi
	if ((${#pids[@]} > 0)); then stop "${pids[0]}"; fi
	say "stopped ${#pids[@]} processes; logs in $run_dir"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# alive NAME PID: fails, showing the end of its log, when the process has exited.
alive() {
	kill -0 "$2" 2>/dev/null && return 0
	tail -n 20 "$run_dir/$1.log" >&2 || true
	die "$1 exited (log: $run_dir/$1.log)"
}

: >"$run_dir/pids"
if (($# > 0)); then
	bin=$(cd "$1" && pwd)
else
	bin=$root/bin
	say "building $bin"
	mkdir -p "$bin"
	(cd "$root" && go build -o "$bin/" ./cmd/sortie ./services/...)
	ln -sf sortie "$bin/sortie-worker"
fi
for b in sortie sortie-worker "${services[@]}"; do
	[[ -x $bin/$b ]] || die "$bin/$b is missing (task build makes it)"
done

export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_REGION=us-east-1 \
	AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
unset AWS_SESSION_TOKEN AWS_PROFILE

# The instances find sortie-worker on their PATH, as an AMI would ship it.
started=$(now_ms)
start localcloud "$bin/sortie" localcloud --addr "127.0.0.1:$port" --instance-path "$bin" \
	--data-dir "$run_dir/instances"
for ((i = 0; ; i++)); do
	alive localcloud "${pids[0]}"
	if grep -q '^local cloud serving on' "$run_dir/localcloud.log" &&
		(: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		break
	fi
	((i < 300)) || die "the local cloud is not listening on 127.0.0.1:$port after 30 s"
	sleep 0.1
done
say "local cloud on $AWS_ENDPOINT_URL (pid ${pids[0]})"

"$bin/sortie" infra up >"$run_dir/infra.log" 2>&1 || {
	cat "$run_dir/infra.log" >&2
	die "infra up failed"
}
say "infra up (stack $SORTIE_PREFIX): $(tail -n 1 "$run_dir/infra.log")"

"$bin/sortie" demo prepare | tee "$run_dir/prepare.log" | sed 's/^/up: /'
ssh_key=$(sed -n 's/^SORTIE_SSH_KEY=//p' "$run_dir/prepare.log")
[[ -n $ssh_key ]] || die "demo prepare printed no SORTIE_SSH_KEY"

# The demo's timings, as `sortie dev` sets them: fast polls and checks.
export SORTIE_WAITER_MIN_DELAY=100ms SORTIE_WAITER_MAX_DELAY=1s SORTIE_LAUNCH_TIMEOUT=1m \
	SORTIE_BOOTSTRAP_DIAL_TIMEOUT=30s SORTIE_MONITOR_INTERVAL=1s SORTIE_POLL_WAIT=1s \
	SORTIE_METRICS_FLUSH=500ms SORTIE_ARCHIVE_TIMEOUT=30s
hostkey_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
start_service planner "$bin/planner"
SORTIE_HOSTKEY_SECRET=$hostkey_secret start_service provisioner "$bin/provisioner"
unset hostkey_secret
SORTIE_SSH_KEY=$ssh_key start_service bootstrapper "$bin/bootstrapper"
SORTIE_SSH_KEY=$ssh_key start_service monitor "$bin/monitor"
SORTIE_SSH_KEY=$ssh_key start_service reaper "$bin/reaper"
sleep 0.3 # a misconfigured service exits at once
for i in "${!names[@]}"; do alive "${names[i]}" "${pids[i]}"; done
say "running: $(for i in "${!names[@]}"; do printf '%s=%s ' "${names[i]}" "${pids[i]}"; done)"
# Where each service serves /healthz, /readyz and /metrics (it logs the address it got).
if [[ -n $SORTIE_HTTP_ADDR ]]; then
	for i in "${!names[@]}"; do
		[[ ${names[i]} == localcloud ]] && continue
		for ((n = 0; ; n++)); do
			alive "${names[i]}" "${pids[i]}"
			addr=$(sed -n 's/.*"msg":"serving health and metrics".*"addr":"\([^"]*\)".*/\1/p' "$run_dir/${names[i]}.log" | head -n 1)
			[[ -n $addr ]] && break
			((n < 100)) || die "${names[i]} does not say where it serves /healthz after 10 s"
			sleep 0.1
		done
		say "$(printf '%-12s' "${names[i]}") http://$addr/healthz /readyz /metrics"
	done
fi
say "pids in $run_dir/pids, logs in $run_dir"
echo

# In the background so that a SIGTERM to this script is handled at once (bash runs traps
# only between foreground commands); cleanup stops it like the others.
rc=0
"$bin/sortie" demo submit --watch --timeout "${DEMO_TIMEOUT:-2m}" &
submit_pid=$!
wait "$submit_pid" || rc=$?
submit_pid=
for i in "${!names[@]}"; do
	kill -0 "${pids[i]}" 2>/dev/null || {
		say "${names[i]} exited during the demo (log: $run_dir/${names[i]}.log)"
		rc=1
	}
done
ms=$(($(now_ms) - started))
say "wall time from the local cloud's start to the demo's end: $((ms / 1000)).$((ms % 1000 / 100))s"
exit "$rc"
