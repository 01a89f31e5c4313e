#!/usr/bin/env bash
# Start a Ray head on THIS machine, bound to 127.0.0.1, declaring the project's custom resources.
#
#   cluster/start_local.sh --block    # foreground: Ctrl-C (or SIGTERM to this process) stops it
#   cluster/start_local.sh            # background head; `ray stop` stops it (and any other Ray
#                                     # of your user on this machine)
#
# Then: rvos-ray run --config configs/tiny.yaml --address 127.0.0.1:$RAY_PORT
#  or:  ray job submit --address http://127.0.0.1:$RAY_DASHBOARD_PORT --working-dir . -- python jobs/evaluate.py ...
#
# Custom resources steer stages to nodes: an actor whose stage asks `custom: {seg: 1}` can only
# run on a node that declares `seg`. On a GPU cluster each node type declares the stages it
# hosts (cluster/ray-cluster.yaml); here one node declares them all, so every stage fits.
#
# Everything listens on 127.0.0.1 (GCS, dashboard, client server, agents). Every port can be set
# through the environment, so several heads can coexist on one machine (tests pick free ports).
# Extra arguments are passed to `ray start`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
ray_bin="${RAY_BIN:-$repo/.venv/bin/ray}"
[ -x "$ray_bin" ] || ray_bin="$(command -v ray)"
# Jobs submitted to this head run `python ...` from its environment: the same venv as its ray.
export PATH="$(dirname "$ray_bin"):$PATH"

RAY_PORT="${RAY_PORT:-6380}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
RAY_CLIENT_PORT="${RAY_CLIENT_PORT:-10001}"
RAY_AGENT_PORT="${RAY_AGENT_PORT:-52365}"
RAY_NUM_CPUS="${RAY_NUM_CPUS:-$(nproc)}"
default_resources='{"seg": 2, "prop": 4, "gnd": 5}'  # 2 segmenters, 4 propagators, 5 grounders
RVOS_RESOURCES="${RVOS_RESOURCES:-$default_resources}"

# Ray's multi-node refusal on Windows/macOS stays on; this head is for Linux.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# Every port listens on 127.0.0.1, so nothing off this machine can reach the head; token auth
# also keeps out other users of this machine. The token is ~/.ray/auth_token (created on first
# use); drivers, `ray job submit` and the dashboard of the same user read it from there.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

args=(
  start --head
  --node-ip-address 127.0.0.1
  --port "$RAY_PORT"
  --ray-client-server-port "$RAY_CLIENT_PORT"
  --dashboard-host 127.0.0.1
  --dashboard-port "$RAY_DASHBOARD_PORT"
  --dashboard-agent-listen-port "$RAY_AGENT_PORT"
  --num-cpus "$RAY_NUM_CPUS"
  --resources "$RVOS_RESOURCES"
  --disable-usage-stats
)
[ -n "${RAY_TEMP_DIR:-}" ] && args+=(--temp-dir "$RAY_TEMP_DIR")

echo "starting a Ray head on 127.0.0.1:$RAY_PORT with num_cpus=$RAY_NUM_CPUS resources=$RVOS_RESOURCES" >&2
echo "dashboard / job server: http://127.0.0.1:$RAY_DASHBOARD_PORT (this machine only)" >&2
exec "$ray_bin" "${args[@]}" "$@"
