#!/usr/bin/env bash
# Benchmark (not a test): durable PUT throughput over TLS beside plain http, on three standalone
# Caucus nodes started the same way but for TLS (certificates from scripts/tls-certificates.sh)
# and, on the third, TLS with client tokens (--auth-tokens-file, a write token on every request),
# measured in turn with wrk at 1, 16 and 64 connections. wrk keeps its connections alive, so this is
# the cost of encryption on a kept-alive connection, not of handshakes; the last row opens a new
# connection per request (curl, one at a time) to show the handshake's cost too.
#   bench/tls.sh [seconds-per-run (default 10)]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
seconds="${1:-10}"
scripts/install-deps.sh wrk openssl
swift build -c release --product caucus >/dev/null

work="$(mktemp -d)"
scripts/tls-certificates.sh "$work/certs" >/dev/null
plain_port=16687; tls_port=16689; auth_port=16691
token="$(.build/release/caucus token create --name bench --role write --tokens-file "$work/tokens.json")"
.build/release/caucus serve --rpc-port $plain_port --consensus-port 16688 --data-dir "$work/plain" --log-level warning &
plain_pid=$!
.build/release/caucus serve --rpc-port $tls_port --consensus-port 16690 --data-dir "$work/tls" --log-level warning \
  --tls-cert-file "$work/certs/node.pem" --tls-key-file "$work/certs/node.key" --tls-ca-file "$work/certs/ca.pem" &
tls_pid=$!
.build/release/caucus serve --rpc-port $auth_port --consensus-port 16692 --data-dir "$work/auth" --log-level warning \
  --tls-cert-file "$work/certs/node.pem" --tls-key-file "$work/certs/node.key" --tls-ca-file "$work/certs/ca.pem" \
  --auth-tokens-file "$work/tokens.json" &
auth_pid=$!
cleanup() { kill $plain_pid $tls_pid $auth_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ca=(--cacert "$work/certs/ca.pem")
for _ in $(seq 1 200); do
  curl -fsS "localhost:$plain_port/healthz" >/dev/null 2>&1 && curl -fsS "${ca[@]}" "https://localhost:$tls_port/healthz" >/dev/null 2>&1 \
    && curl -fsS "${ca[@]}" "https://localhost:$auth_port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

# measure NAME URL CONNECTIONS → one row (wrk does not verify the certificate; curl above did)
measure() { wrk_row 22 "$1" "$2" bench/put.lua "$3" "$seconds"; echo; }

# new_connections NAME URL CURL-OPTIONS… → one row: sequential PUTs, a new connection (and, over
# TLS, a full handshake) each, for $seconds / 2 seconds
new_connections() {
  local name="$1" url="$2"; shift 2
  local end=$(( $(date +%s) + seconds / 2 )) count=0 start; start="$(date +%s.%N)"
  while [ "$(date +%s)" -lt "$end" ]; do
    curl -fsS -o /dev/null "$@" -X PUT "$url/v1/groups/DataRegion-0/kv/bench/new/$count" -d "value-0123456789"
    count=$((count + 1))
  done
  printf "%-22s %5s %12s\n" "$name" "1" "$(awk -v c=$count -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", c / (e - s)}')"
}

echo "Caucus TLS bench: durable PUT, ${seconds}s per run, $(nproc) cores, wrk on the same machine"
printf "%-22s %5s %12s %10s %10s %8s\n" "workload" "conns" "requests/s" "p50" "p99" "non-2xx"
for connections in 1 16 64; do
  measure "PUT http" "http://127.0.0.1:$plain_port" $connections
  measure "PUT https" "https://127.0.0.1:$tls_port" $connections
  CAUCUS_TOKEN="$token" measure "PUT https + token" "https://127.0.0.1:$auth_port" $connections
done
new_connections "PUT http, new conn" "http://127.0.0.1:$plain_port"
new_connections "PUT https, new conn" "https://127.0.0.1:$tls_port" "${ca[@]}"
