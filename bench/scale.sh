#!/usr/bin/env bash
# Benchmark (not a test) for many groups per node (issue 11): starts a 3-node cluster (each node
# hosts every group), creates N groups through node 1, and prints one table: the creation rate,
# the whole cluster's idle CPU (% of one core, over --idle-seconds), each node's RSS, durable
# writes to random groups through node 1 at 16 connections (throughput, p50, p99, errors), and
# how long after node 3 is killed (SIGKILL) nodes 1 and 2 lead every group.
#   bench/scale.sh [groups (default 1000)] [idle-seconds (default 10)] [write-seconds (default 10)]
# CAUCUS_CONFIG=file passes a properties file to every node (e.g. raft.quiesceAfterTicks=0 to
# compare without quiescence).
set -euo pipefail
cd "$(dirname "$0")/.."
groups="${1:-1000}"
idle_seconds="${2:-10}"
write_seconds="${3:-10}"
scripts/install-deps.sh wrk bc
swift build -c release --product caucus >/dev/null

work="$(mktemp -d)"
port=26667; cport=26767
# Three `caucus serve` processes (what dev-cluster starts), each its own child, so that one can be
# killed for the failover measurement without the others being stopped.
members="1=127.0.0.1:$cport,2=127.0.0.1:$((cport + 1)),3=127.0.0.1:$((cport + 2))"
pids=()
for node in 1 2 3; do
  .build/release/caucus serve --node-id $node --rpc-port $((port + node - 1)) --consensus-port $((cport + node - 1)) \
    --data-dir "$work/data/node-$node" --cluster "$members" ${CAUCUS_CONFIG:+--config "$CAUCUS_CONFIG"} \
    >"$work/node-$node.log" 2>&1 &
  pids+=($!)
done
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ready() { curl -fsS "localhost:$1/readyz" >/dev/null 2>&1; }
for _ in $(seq 1 300); do
  ready $port && ready $((port + 1)) && ready $((port + 2)) && break
  sleep 0.1
done
ready $port && ready $((port + 1)) && ready $((port + 2)) || { echo "scale: the cluster did not start:"; tail -n 5 "$work"/node-*.log; exit 1; }

# Creation: 16 keep-alive connections through node 1; every answer must be 201.
creation=$(python3 bench/create_groups.py $port "$groups" 16 1)
echo "creation: $creation"
rate=$(sed -n 's/.* rate=\([0-9]*\).*/\1/p' <<<"$creation")
slowest=$(sed -n 's/.* slowest[0-9]*=\([0-9]*\).*/\1/p' <<<"$creation")
failed=$(sed -n 's/.* failures=\([0-9]*\).*/\1/p' <<<"$creation")
create_p99=$(sed -n 's/.* p99ms=\([0-9.]*\).*/\1/p' <<<"$creation")

# Idle: a few seconds to settle (elections of the last groups), then CPU over the window.
sleep 5
ticks() { local total=0; for pid in "${pids[@]}"; do total=$((total + $(awk '{print $14 + $15}' /proc/$pid/stat))); done; echo $total; }
before=$(ticks)
sleep "$idle_seconds"
after=$(ticks)
idle_cpu=$(echo "($after - $before) * 100 / ($(getconf CLK_TCK) * $idle_seconds)" | bc -l)
rss() { awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$1/status; }
rss1=$(rss ${pids[0]}); rss2=$(rss ${pids[1]}); rss3=$(rss ${pids[2]})

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

# Failover: SIGKILL node 3, then time until nodes 1 and 2 lead every group between them.
leaders() { curl -s --max-time 2 "localhost:$1/v1/node" | sed -n 's/.*"leaderCount":\([0-9]*\).*/\1/p'; }
total=$(curl -s "localhost:$port/v1/node" | sed -n 's/.*"groupCount":\([0-9]*\).*/\1/p')
led_by_3=$(leaders $((port + 2)))
kill -KILL "${pids[2]}"
{ wait "${pids[2]}"; } 2>/dev/null || true
killed=$(date +%s.%N)
failover="> 60"
for _ in $(seq 1 600); do
  one=$(leaders $port); two=$(leaders $((port + 1)))
  if [ -n "$one" ] && [ -n "$two" ] && [ $((one + two)) -eq "$total" ]; then
    failover=$(printf '%.1f' "$(echo "$(date +%s.%N) - $killed" | bc -l)")
    break
  fi
  sleep 0.1
done

printf '| groups | created/s (16 conn; slowest tenth) | create failures | create p99 ms | idle CPU (%% of one core, 3 nodes) | RSS MiB (nodes 1, 2, 3) | writes/s (16 conn) | p50 | p99 | non-2xx | failover s (%s groups led by the killed node) |\n' "$led_by_3"
printf '|---|---|---|---|---|---|---|---|---|---|---|\n'
printf '| %s | %s (%s) | %s | %s | %.1f | %s, %s, %s | %s | %s | %s | %s | %s |\n' "$groups" "$rate" "$slowest" "$failed" "$create_p99" "$idle_cpu" \
  "$rss1" "$rss2" "$rss3" "$throughput" "$p50" "$p99" "$errors" "$failover"
[ -z "$socket_errors" ] || echo "wrk: $socket_errors"
