#!/usr/bin/env bash
# Benchmarks (not tests): one standalone Caucus node and one single-node etcd 3.4 on this machine,
# measured in the same run with wrk at 1, 16 and 64 connections. Prints throughput, p50 and p99 for
# durable PUT and for GET, fsyncs per write, and the node's RSS idle, under load and after each
# repetition (a leak shows as growth).
#   bench/run.sh [seconds-per-run (default 10)] [repetitions (default 2)]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
seconds="${1:-10}"
repetitions="${2:-2}"
scripts/install-deps.sh wrk etcd-server
swift build -c release --product caucus >/dev/null

work="$(mktemp -d)"
port=16667; cport=16668; etcd_port=12379; etcd_peer=12380
.build/release/caucus serve --rpc-port $port --consensus-port $cport --data-dir "$work/caucus" --log-level warning &
caucus_pid=$!
etcd --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" --initial-cluster "default=http://127.0.0.1:$etcd_peer" \
  --log-level error >"$work/etcd.log" 2>&1 &
etcd_pid=$!
cleanup() { kill $caucus_pid $etcd_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 1 200); do
  curl -fsS "localhost:$port/healthz" >/dev/null 2>&1 && curl -fsS "localhost:$etcd_port/health" >/dev/null 2>&1 && break
  sleep 0.1
done
for i in $(seq 0 999); do echo "bench/get/$i"; done | xargs -P 8 -I{} curl -fsS -o /dev/null -X PUT "localhost:$port/v1/groups/DataRegion-0/kv/{}" -d "value-0123456789"

rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$caucus_pid/status; }
metric() { curl -fsS "localhost:$port/metrics" | awk -v name="$1" '$1 == name {print $2}'; }
# measure NAME URL SCRIPT CONNECTIONS → one row
measure() { wrk_row 18 "$1" "$2" "$3" "$4" "$seconds"; }
# measure_put CONNECTIONS → a row with the fsyncs per write of that run
measure_put() {
  local writes_before syncs_before
  writes_before="$(metric caucus_writes_committed_total)"; syncs_before="$(metric caucus_wal_fsyncs_total)"
  measure "caucus PUT" "http://127.0.0.1:$port" bench/put.lua "$1"
  awk -v s="$(( $(metric caucus_wal_fsyncs_total) - syncs_before ))" -v w="$(( $(metric caucus_writes_committed_total) - writes_before ))" \
    'BEGIN {printf " %10.4f\n", s / w}'
}

echo "Caucus bench: ${seconds}s per run, $(nproc) cores, wrk on the same machine"
echo "idle RSS of the caucus node: $(rss) MiB"
for repetition in $(seq 1 "$repetitions"); do
  echo
  echo "repetition $repetition"
  printf "%-18s %5s %12s %10s %10s %8s %10s\n" "workload" "conns" "requests/s" "p50" "p99" "non-2xx" "fsync/wr"
  peak=0
  for connections in 1 16 64; do
    measure_put $connections
    r="$(rss)"; peak="$(awk -v a="$peak" -v b="$r" 'BEGIN {print (b > a ? b : a)}')"
  done
  for connections in 1 16 64; do
    measure "etcd PUT" "http://127.0.0.1:$etcd_port" bench/etcd-put.lua $connections; echo
  done
  for connections in 1 16 64; do
    measure "caucus GET" "http://127.0.0.1:$port" bench/get.lua $connections; echo
    r="$(rss)"; peak="$(awk -v a="$peak" -v b="$r" 'BEGIN {print (b > a ? b : a)}')"
  done
  echo "caucus RSS: peak under load ${peak} MiB, after the repetition $(rss) MiB"
done
