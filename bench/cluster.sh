#!/usr/bin/env bash
# Benchmarks (not tests): a three-node Caucus raft cluster beside a three-node etcd 3.4 cluster on
# this machine, in the same run, with wrk at 1, 16 and 64 connections: durable writes to the leader
# and through a follower (p50/p99), then the idle CPU and RSS of the Caucus nodes hosting 100 groups.
#   bench/cluster.sh [seconds-per-run (default 8)]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
seconds="${1:-8}"
scripts/install-deps.sh wrk etcd-server
swift build -c release --product caucus >/dev/null

work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cluster="1=127.0.0.1:26101,2=127.0.0.1:26102,3=127.0.0.1:26103"
for i in 1 2 3; do
  .build/release/caucus serve --node-id $i --rpc-port $((26000 + i)) --consensus-port $((26100 + i)) \
    --data-dir "$work/caucus-$i" --cluster "$cluster" --log-level warning &
  pids+=($!)
done
etcd_cluster="e1=http://127.0.0.1:22381,e2=http://127.0.0.1:22382,e3=http://127.0.0.1:22383"
for i in 1 2 3; do
  etcd --name e$i --data-dir "$work/etcd-$i" --listen-client-urls "http://127.0.0.1:2237$i" \
    --advertise-client-urls "http://127.0.0.1:2237$i" --listen-peer-urls "http://127.0.0.1:2238$i" \
    --initial-advertise-peer-urls "http://127.0.0.1:2238$i" --initial-cluster "$etcd_cluster" \
    --initial-cluster-state new --log-level error >"$work/etcd-$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 300); do
  leader="$(curl -fsS localhost:26001/v1/groups/DataRegion-0?forward=none 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("leader") or "")' 2>/dev/null || true)"
  [ -n "$leader" ] && curl -fsS localhost:22371/health >/dev/null 2>&1 && break
  sleep 0.1
done
# Both clusters just started: let their start-up work (directory registration, etcd's bootstrap
# and first fsyncs) finish before the first measurement, so it lands in neither system's figures.
sleep 2
follower=$(( leader % 3 + 1 ))
etcd_leader_port="$(for i in 1 2 3; do curl -fsS -X POST localhost:2237$i/v3/maintenance/status -d '{}' | python3 -c "import json,sys; d=json.load(sys.stdin); print($i if d['leader']==d['header']['member_id'] else '')"; done | tr -d '\n')"
etcd_follower=$(( etcd_leader_port % 3 + 1 ))

measure() { wrk_row 26 "$1" "$2" "$3" "$4" "$seconds"; echo; }
echo "Caucus cluster bench: ${seconds}s per run, $(nproc) cores, 3 caucus + 3 etcd nodes and wrk on one machine"
echo "caucus leader: node $leader, follower used: node $follower; etcd leader: e$etcd_leader_port, follower: e$etcd_follower"
printf "%-26s %5s %12s %10s %10s %8s\n" "workload" "conns" "requests/s" "p50" "p99" "non-2xx"
rss() { for pid in "${pids[@]:0:3}"; do awk '/VmRSS/ {printf "%.1f ", $2/1024}' /proc/$pid/status; done; echo "MiB"; }
echo "caucus RSS per node before the runs: $(rss)"
for connections in 1 16 64; do measure "caucus PUT to leader" "http://127.0.0.1:$((26000 + leader))" bench/put.lua $connections; done
echo "caucus RSS per node after the leader runs: $(rss)"
for connections in 1 16 64; do measure "caucus PUT via follower" "http://127.0.0.1:$((26000 + follower))" bench/put.lua $connections; done
echo "caucus RSS per node after the follower runs: $(rss)"
# The same load again: memory must plateau (bounded queues, no leak across runs).
measure "caucus PUT to leader (again)" "http://127.0.0.1:$((26000 + leader))" bench/put.lua 64
measure "caucus PUT via follower (again)" "http://127.0.0.1:$((26000 + follower))" bench/put.lua 64
echo "caucus RSS per node after repeating the 64-connection runs: $(rss)"
for connections in 1 16 64; do measure "etcd PUT to leader" "http://127.0.0.1:2237$etcd_leader_port" bench/etcd-put.lua $connections; done
for connections in 1 16 64; do measure "etcd PUT via follower" "http://127.0.0.1:2237$etcd_follower" bench/etcd-put.lua $connections; done

# 100 groups on the three nodes, then idle.
for n in $(seq 1 99); do
  curl -fsS -o /dev/null -X POST localhost:26001/v1/groups -d "{\"id\":\"DataRegion-$n\",\"peers\":[1,2,3]}"
done
sleep 3
ticks() { for pid in "${pids[@]:0:3}"; do awk '{print $14 + $15}' /proc/$pid/stat; done | awk '{s += $1} END {print s}'; }
before="$(ticks)"; sleep 10; after="$(ticks)"
hz="$(getconf CLK_TCK)"
echo "idle CPU of the 3 caucus nodes with 100 groups: $(awk -v t=$((after - before)) -v hz="$hz" 'BEGIN {printf "%.2f%% of one core", t / hz / 10 * 100}')"
for i in 1 2 3; do
  echo "node $i RSS with 100 groups: $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/${pids[$((i - 1))]}/status)"
done
