#!/usr/bin/env bash
# Benchmark (not a test) for many groups per node (issue 11): starts a 3-node cluster (each node
# hosts every group), creates N groups through node 1, and prints one table: the creation rate,
# the whole cluster's idle CPU (% of one core, over --idle-seconds), each node's RSS, and durable
# writes to random groups through node 1 at 16 connections (throughput, p50, p99, errors).
#   bench/scale.sh [groups (default 1000)] [idle-seconds (default 10)] [write-seconds (default 10)]
set -euo pipefail
cd "$(dirname "$0")/.."
groups="${1:-1000}"
idle_seconds="${2:-10}"
write_seconds="${3:-10}"
scripts/install-deps.sh wrk bc
swift build -c release --product caucus >/dev/null

work="$(mktemp -d)"
port=26667; cport=26767
.build/release/caucus dev-cluster --nodes 3 --rpc-port $port --consensus-port $cport --data-dir "$work/data" \
  >"$work/cluster.out" 2>&1 &
cluster_pid=$!
cleanup() { kill -INT $cluster_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ready() { curl -fsS "localhost:$1/readyz" >/dev/null 2>&1; }
for _ in $(seq 1 300); do
  ready $port && ready $((port + 1)) && ready $((port + 2)) && break
  sleep 0.1
done
pids=($(sed -n 's/.*pid \([0-9]*\)).*/\1/p' "$work/cluster.out"))
[ "${#pids[@]}" -eq 3 ] || { echo "scale: the cluster did not start:"; cat "$work/cluster.out"; exit 1; }

# Creation: 8 at a time through node 1; every answer must be 201.
start=$(date +%s.%N)
failed=$(seq 1 "$groups" | xargs -P 8 -I{} curl -s -o /dev/null -w '%{http_code}\n' -X POST "localhost:$port/v1/groups" \
  -d '{"id":"DataRegion-{}","peers":[1,2,3]}' | grep -vc '^201$' || true)
created_seconds=$(echo "$(date +%s.%N) - $start" | bc -l)
rate=$(echo "$groups / $created_seconds" | bc -l)

# Idle: a few seconds to settle (elections of the last groups), then CPU over the window.
sleep 5
ticks() { local total=0; for pid in "${pids[@]}"; do total=$((total + $(awk '{print $14 + $15}' /proc/$pid/stat))); done; echo $total; }
before=$(ticks)
sleep "$idle_seconds"
after=$(ticks)
idle_cpu=$(echo "($after - $before) * 100 / ($(getconf CLK_TCK) * $idle_seconds)" | bc -l)
rss() { awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$1/status; }

# Writes to random groups, proxied by node 1 to each group's leader.
cat >"$work/random-group.lua" <<EOF
math.randomseed(os.time())
request = function()
  local path = "/v1/groups/DataRegion-" .. math.random(0, $groups) .. "/kv/k" .. math.random(1, 1000)
  return wrk.format("PUT", path, nil, "value-0123456789")
end
EOF
wrk -t 2 -c 16 -d "${write_seconds}s" --latency -s "$work/random-group.lua" "http://localhost:$port" >"$work/wrk.out"
throughput=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")
p50=$(awk '$1 == "50%" {print $2}' "$work/wrk.out")
p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.out")
errors=$(awk '/Non-2xx or 3xx responses/ {print $5}' "$work/wrk.out"); errors=${errors:-0}
socket_errors=$(awk '/Socket errors/ {print $0}' "$work/wrk.out")

printf '| groups | created/s | create failures | idle CPU (%% of one core, 3 nodes) | RSS MiB (nodes 1, 2, 3) | writes/s (16 conn) | p50 | p99 | non-2xx |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
printf '| %s | %.0f | %s | %.1f | %s, %s, %s | %s | %s | %s | %s |\n' "$groups" "$rate" "$failed" "$idle_cpu" \
  "$(rss ${pids[0]})" "$(rss ${pids[1]})" "$(rss ${pids[2]})" "$throughput" "$p50" "$p99" "$errors"
[ -z "$socket_errors" ] || echo "wrk: $socket_errors"
