#!/usr/bin/env bash
# The README's curl walk-through, run against a fresh node; fails on any unexpected answer.
# Uses $CAUCUS_BIN, else the newest of .build/{debug,release}/caucus. Starts the node on a free
# port with a temporary data directory and stops it at the end.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${CAUCUS_BIN:-}"
if [ -z "$bin" ]; then
  bin="$(ls -t "$root"/.build/debug/caucus "$root"/.build/release/caucus 2>/dev/null | head -n 1 || true)"
fi
[ -x "$bin" ] || { echo "smoke: no caucus binary; run swift build first or set CAUCUS_BIN" >&2; exit 2; }

data="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cport="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$bin" serve --rpc-port "$port" --consensus-port "$cport" --data-dir "$data" --log-level warning &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
url="http://127.0.0.1:$port"
for _ in $(seq 1 300); do
  curl -fsS "$url/healthz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "smoke: caucus exited during start-up" >&2; exit 1; }
  sleep 0.1
done

steps=0
body_file="$(mktemp)"
# call EXPECTED_STATUS CURL_ARGS... : runs curl, checks the status, leaves the body in $body_file.
call() {
  local expected="$1"; shift
  local status
  status="$(curl -sS -o "$body_file" -w '%{http_code}' "$@")"
  steps=$((steps + 1))
  if [ "$status" != "$expected" ]; then
    echo "smoke: step $steps: curl $* → $status, expected $expected" >&2
    cat "$body_file" >&2; echo >&2
    exit 1
  fi
}
# check PYTHON_EXPRESSION : evaluates it with `b` bound to the JSON body (or `raw` to the bytes).
check() {
  python3 - "$1" "$body_file" <<'PY' || { echo "smoke: step $steps: check failed: $1" >&2; cat "$body_file" >&2; echo >&2; exit 1; }
import json, sys
expression, path = sys.argv[1], sys.argv[2]
raw = open(path, 'rb').read()
try:
    b = json.loads(raw)
except ValueError:
    b = None
sys.exit(0 if eval(expression) else 1)
PY
}

g="$url/v1/groups/DataRegion-0"
# --- the README walk-through ---
call 200 -X PUT "$g/kv/hello" -d world
check 'b["key"] == "hello" and b["revision"] == b["index"] and b["group"] == "DataRegion-0"'
call 200 "$g/kv/hello"
check 'b["value"] == "world" and b["revision"] >= 1'
call 200 "$g/kv/hello?raw=true"
check 'raw == b"world"'
call 200 -X PUT "$g/kv/users/alice" -d '{"age": 31}'
call 200 -X PUT "$g/kv/users/bob" -d 'builder'
call 200 "$g/kv?prefix=users/&limit=1"
check 'b["items"][0]["key"] == "users/alice" and b["more"] is True'
call 200 "$g/kv?prefix=users/&after=users/alice"
check '[i["key"] for i in b["items"]] == ["users/bob"] and b["more"] is False'
call 412 -X PUT -H 'If-None-Match: *' "$g/kv/hello" -d again
check 'b["error"] == "precondition_failed" and b["currentRevision"] >= 1'
call 200 "$g/kv/hello"
rev="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["revision"])' "$body_file")"
call 412 -X PUT -H "If-Match: \"$((rev + 1000))\"" "$g/kv/hello" -d stale
call 200 -X PUT -H "If-Match: \"$rev\"" "$g/kv/hello" -d 'world, again'
call 200 -X POST "$g/write" -H 'Content-Type: application/json' \
  -d '{"ops":[{"op":"put","key":"a","value":"1"},{"op":"put","key":"b","valueBase64":"AP8="},{"op":"delete","key":"users/bob"}]}'
check '[r["op"] for r in b["results"]] == ["put","put","delete"] and b["results"][2]["deleted"] is True'
call 412 -X POST "$g/write" -d '{"ops":[{"op":"put","key":"a","value":"2"},{"op":"put","key":"c","value":"3","ifRevision":999999}]}'
check 'b["operation"] == 1'
call 200 -X POST "$g/read" -d '{"consistency":"linearizable","ops":[{"op":"get","key":"a"},{"op":"get","key":"c"},{"op":"list","prefix":"","limit":10}]}'
check 'b["results"][0]["value"] == "1" and b["results"][1]["found"] is False and len(b["results"][2]["items"]) == 4'
call 200 "$g/kv/b"
check 'b["valueBase64"] == "AP8="'
# Keys that are not UTF-8: named percent-encoded in a path, or in base64 in queries and bodies.
call 200 -X PUT "$g/kv/bin%FF%00" -d binary
call 200 "$g/kv?prefixBase64=YmluLw%3D%3D"
check 'b["items"] == []'
call 200 "$g/kv?prefixBase64=Ymlu"
check '[i["keyBase64"] for i in b["items"]] == ["Ymlu/wA="]'
call 200 -X POST "$g/read" -d '{"ops":[{"op":"get","keyBase64":"Ymlu/wA="}]}'
check 'b["results"][0]["value"] == "binary"'
call 200 -X PUT -H 'Idempotency-Key: order-17' "$g/kv/orders/17" -d paid
first="$(cat "$body_file")"
call 200 -X PUT -H 'Idempotency-Key: order-17' "$g/kv/orders/17" -d paid
[ "$first" = "$(cat "$body_file")" ] || { echo "smoke: an idempotent retry answered differently" >&2; exit 1; }
call 400 -X PUT -H 'Idempotency-Key: order-17' "$g/kv/orders/18" -d paid
check '"different request" in b["message"]'
call 200 "$g/watch?prefix=users/&fromIndex=0&timeoutMs=1000"
check '[(e["type"], e["key"]) for e in b["events"]] == [("put","users/alice"),("put","users/bob"),("delete","users/bob")] and b["index"] >= 8'
call 200 "$g/watch?prefix=nothing-here/&timeoutMs=200"
check 'b["events"] == []'
call 200 -X DELETE "$g/kv/hello"
check 'b["deleted"] is True'
call 404 "$g/kv/hello"
check 'b["error"] == "key_not_found"'
call 200 "$g?forward=none"
check 'b["role"] == "leader" and b["appliedIndex"] >= 8 and b["peers"][0]["id"] == 1'
call 201 -X POST "$url/v1/groups" -d '{"id":"SchemaRegion-1","peers":[1]}'
check 'b["id"] == "SchemaRegion-1"'
# The same creation again (a retry after a timeout) is answered as the first; other peers are 409.
call 201 -X POST "$url/v1/groups" -d '{"id":"SchemaRegion-1"}'
check 'b["id"] == "SchemaRegion-1"'
call 409 -X POST "$url/v1/groups" -d '{"id":"SchemaRegion-1","peers":[{"id":1,"endpoint":"127.0.0.1:1"}]}'
check 'b["error"] == "group_already_exists"'
call 400 -X POST "$url/v1/groups" -d '{"id":"SchemaRegion-2","peers":[1,{"id":2,"endpoint":"127.0.0.1:40011"}]}'
check 'b["error"] == "illegal_peer_num"'
call 200 "$url/v1/groups"
check 'sorted(g["id"] for g in b["groups"]) == ["DataRegion-0", "SchemaRegion-1"]'
call 200 -X POST "$url/v1/groups/SchemaRegion-1/snapshot"
check 'b["index"] == 0'
call 200 "$url/v1/groups/DataRegion-0/leader"
check 'b["id"] == 1 and b["local"] is True'
call 200 -X DELETE "$url/v1/groups/SchemaRegion-1"
call 404 "$url/v1/groups/SchemaRegion-1"
check 'b["error"] == "group_not_found"'
call 400 "$url/v1/groups/Region-9/kv/x"
check 'b["error"] == "invalid_group_id"'
call 405 -X PATCH "$g/kv/x"
check 'b["error"] == "method_not_allowed"'
call 400 -X POST "$g/write" -d '{"ops": ['
check 'b["error"] == "invalid_json"'
call 200 "$url/v1/node"
check 'b["id"] == 1 and b["protocol"] == "standalone"'
call 200 "$url/v1/cluster"
check 'b["nodes"][0]["reachable"] is True'
call 200 "$url/v1/cluster?groups=false"
check 'b["nodes"][0]["groupCount"] == 1 and b["nodes"][0]["leaderCount"] == 1 and "groups" not in b["nodes"][0]'
call 200 -X POST "$url/v1/cluster/rebalance"
check 'b["moved"] == 0 and b["balanced"] is True and b["transfers"] == []'
call 400 -X POST "$url/v1/cluster/rebalance?max=0"
check 'b["error"] == "bad_request"'
call 200 "$url/healthz"
call 200 "$url/readyz"
call 200 "$url/metrics"
check 'b"caucus_wal_fsyncs_total" in raw and b"caucus_http_requests_total" in raw'

# --- the README's client authentication: a second node with tokens ---
tokens="$data/tokens.json"
"$bin" token create --name ops --role admin --tokens-file "$tokens" > "$data/ops.token" 2>/dev/null
"$bin" token create --name dashboard --role read --tokens-file "$tokens" > "$data/dashboard.token" 2>/dev/null
"$bin" token create --name app --role write --groups 'DataRegion-1,DataRegion-2*' --key-prefix users/ \
  --tokens-file "$tokens" > "$data/app.token" 2>/dev/null
[ "$(printf %s "$(cat "$data/ops.token")" | sha256sum | cut -d' ' -f1)" = "$("$bin" token hash < "$data/ops.token")" ] \
  || { echo "smoke: caucus token hash disagrees with sha256sum" >&2; exit 1; }
port2="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$bin" serve --rpc-port "$port2" --consensus-port "$cport" --data-dir "$data/auth" --log-level warning \
  --auth-tokens-file "$tokens" &
pid2=$!
cleanup() {
  kill "$pid" "$pid2" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; wait "$pid2" 2>/dev/null || true; rm -rf "$data"
}
url2="http://127.0.0.1:$port2"
for _ in $(seq 1 300); do
  curl -fsS "$url2/healthz" >/dev/null 2>&1 && break
  kill -0 "$pid2" 2>/dev/null || { echo "smoke: caucus with tokens exited during start-up" >&2; exit 1; }
  sleep 0.1
done
ops=(-H "Authorization: Bearer $(cat "$data/ops.token")")
app=(-H "Authorization: Bearer $(cat "$data/app.token")")
dashboard=(-H "Authorization: Bearer $(cat "$data/dashboard.token")")
call 401 "$url2/v1/groups"
check 'b["error"] == "unauthorized"'
call 401 -H "Authorization: Bearer nope" "$url2/v1/groups"
call 201 "${ops[@]}" -X POST "$url2/v1/groups" -d '{"id":"DataRegion-1"}'
call 200 "${app[@]}" -X PUT "$url2/v1/groups/DataRegion-1/kv/users/alice" -d 31
call 403 "${app[@]}" -X PUT "$url2/v1/groups/DataRegion-1/kv/orders/1" -d x
check 'b["error"] == "forbidden"'
call 403 "${app[@]}" -X PUT "$url2/v1/groups/DataRegion-0/kv/users/alice" -d 31
call 403 "${dashboard[@]}" -X PUT "$url2/v1/groups/DataRegion-1/kv/users/bob" -d 1
call 200 "${dashboard[@]}" "$url2/v1/groups"
check 'sorted(g["id"] for g in b["groups"]) == ["DataRegion-0", "DataRegion-1"]'
call 200 "${app[@]}" "$url2/v1/groups"
check '[g["id"] for g in b["groups"]] == ["DataRegion-1"]'
call 200 "$url2/healthz"
call 200 "$url2/metrics"
"$bin" token revoke --name dashboard --tokens-file "$tokens" 2>/dev/null
kill -HUP "$pid2"
for _ in $(seq 1 100); do
  [ "$(curl -sS -o /dev/null -w '%{http_code}' "${dashboard[@]}" "$url2/v1/groups")" = 401 ] && break
  sleep 0.05
done
call 401 "${dashboard[@]}" "$url2/v1/groups"
call 200 "${ops[@]}" "$url2/v1/groups"
echo "smoke: $steps steps passed against $url and $url2"
