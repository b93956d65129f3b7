#!/usr/bin/env bash
# Takes the README's dashboard screenshots: starts a local three-node raft cluster (`caucus
# dev-cluster`) in a temporary directory, creates a few groups with some writes, and photographs
# node 1's /ui in headless Chromium (docs/dashboard.png) and the view of DataRegion-0 on its
# leader, the node that tracks every peer's replication (docs/dashboard-group.png). Stops the
# cluster and removes its data after.
#
#   scripts/dashboard-screenshot.sh [OUTPUT.png]     # the group view goes to OUTPUT-group.png
#
# Environment: CAUCUS_BIN (a built caucus binary, as for scripts/smoke.sh; default: build one),
# RPC_PORT and CONSENSUS_PORT (the first node's ports; defaults 16671 and 16681, away from the
# quick start's), and WAIT_SECONDS_MAX (how long the cluster may take to elect its leaders;
# default 30).
set -euo pipefail
cd "$(dirname "$0")/.."
output="${1:-docs/dashboard.png}"
rpc_port="${RPC_PORT:-16671}"
consensus_port="${CONSENSUS_PORT:-16681}"
wait_seconds_max="${WAIT_SECONDS_MAX:-30}"

scripts/install-deps.sh --tests
caucus="${CAUCUS_BIN:-}"
if [ -z "$caucus" ]; then
  swift build --product caucus
  caucus="$(swift build --show-bin-path)/caucus"
fi

work="$(mktemp -d)"
cluster_pid=""
cleanup() {
  if [ -n "$cluster_pid" ]; then
    # dev-cluster stops its nodes on SIGINT, as on Ctrl-C.
    kill -INT "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

"$caucus" dev-cluster --nodes 3 --rpc-port "$rpc_port" --consensus-port "$consensus_port" \
  --data-dir "$work/data" >"$work/cluster.log" 2>&1 &
cluster_pid=$!

node_url() { echo "http://127.0.0.1:$((rpc_port + $1 - 1))"; }

# Waits until `command` succeeds, or fails the script (with the cluster's log) at the deadline.
wait_for() {
  local what="$1"
  shift
  local deadline=$((SECONDS + wait_seconds_max))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "dashboard-screenshot: timed out waiting for $what; the cluster's log:" >&2
      tail -n 40 "$work/cluster.log" >&2
      exit 1
    fi
    sleep 0.2
  done
}

# Node 2 hosts a replica of every group made here.
has_leader() { curl -fsS "$(node_url 2)/v1/groups/$1?forward=none" | grep -q '"leader":[0-9]'; }

for node in 1 2 3; do wait_for "node $node" curl -fsS "$(node_url "$node")/healthz"; done
wait_for "a leader of DataRegion-0" has_leader DataRegion-0

for group in DataRegion-1 DataRegion-2 SchemaRegion-1; do
  curl -fsS -X POST "$(node_url 1)/v1/groups" -d "{\"id\":\"$group\",\"peers\":[1,2,3]}" >/dev/null
done
curl -fsS -X POST "$(node_url 1)/v1/groups" -d '{"id":"DataRegion-3","peers":[2,3]}' >/dev/null
for group in DataRegion-1 DataRegion-2 DataRegion-3 SchemaRegion-1; do
  wait_for "a leader of $group" has_leader "$group"
done
# Some writes, different amounts per group, through different nodes (followers forward them).
for sequence in $(seq 1 40); do
  curl -fsS -X PUT "$(node_url $((sequence % 3 + 1)))/v1/groups/DataRegion-0/kv/sensor/$sequence" -d "$sequence" >/dev/null
done
for sequence in $(seq 1 15); do
  curl -fsS -X PUT "$(node_url 2)/v1/groups/DataRegion-1/kv/users/$sequence" -d "user $sequence" >/dev/null
  curl -fsS -X PUT "$(node_url 3)/v1/groups/SchemaRegion-1/kv/schema/$sequence" -d "{}" >/dev/null
done

mkdir -p "$(dirname "$output")"
# A fresh profile each; the virtual-time budget lets the page's first polls finish before the
# picture is taken.
screenshot() {
  local file="$1" url="$2"
  rm -rf "$work/profile"
  chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars \
    --user-data-dir="$work/profile" --window-size=1280,900 --virtual-time-budget=5000 \
    --screenshot="$file" "$url" >"$work/chromium.log" 2>&1 || {
    echo "dashboard-screenshot: chromium failed:" >&2
    cat "$work/chromium.log" >&2
    exit 1
  }
  echo "dashboard-screenshot: wrote $file"
}
screenshot "$output" "$(node_url 1)/ui"
leader="$(curl -fsS "$(node_url 2)/v1/groups/DataRegion-0?forward=none" | sed -E 's/.*"leader":([0-9]+).*/\1/')"
screenshot "${output%.png}-group.png" "$(node_url "$leader")/ui#/groups/DataRegion-0"
