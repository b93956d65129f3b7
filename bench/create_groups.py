#!/usr/bin/env python3
"""Creates groups DataRegion-<first>..DataRegion-<first+count-1> through one node over keep-alive
connections (one thread each), and prints one line: created, failures, seconds, groups/s overall
and over the slowest stretch of a tenth of them (the rate sustained while growing), and the p50/p99
latency of one creation. Used by bench/scale.sh; spawning a curl per group costs the client more
CPU than the cluster spends creating them.

  bench/create_groups.py PORT COUNT [CONNECTIONS] [FIRST] [PEERS as JSON, default [1,2,3]]
"""
import http.client
import json
import sys
import threading
import time

port, count = int(sys.argv[1]), int(sys.argv[2])
connections = int(sys.argv[3]) if len(sys.argv) > 3 else 16
first = int(sys.argv[4]) if len(sys.argv) > 4 else 1
peers = json.loads(sys.argv[5]) if len(sys.argv) > 5 else [1, 2, 3]

lock = threading.Lock()
statuses = {}
latencies = []
completions = []  # when each creation was answered, to find the slowest stretch


def worker(offset):
    connection = http.client.HTTPConnection("localhost", port, timeout=60)
    for group in range(first + offset, first + count, connections):
        body = json.dumps({"id": f"DataRegion-{group}", "peers": peers})
        started = time.monotonic()
        try:
            connection.request("POST", "/v1/groups", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            status = response.status
            if status != 201:
                print(f"DataRegion-{group}: {status} {answer[:300].decode(errors='replace')}", file=sys.stderr)
        except (OSError, http.client.HTTPException) as error:
            print(f"DataRegion-{group}: {error}", file=sys.stderr)
            status = 0
            connection.close()
            connection = http.client.HTTPConnection("localhost", port, timeout=60)
        elapsed = time.monotonic() - started
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
            latencies.append(elapsed)
            completions.append(time.monotonic())


started = time.monotonic()
threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(connections)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
seconds = time.monotonic() - started
latencies.sort()
created = statuses.get(201, 0)
failures = count - created
p50 = latencies[len(latencies) // 2] * 1000 if latencies else 0
p99 = latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] * 1000 if latencies else 0
# The slowest stretch of a tenth of the groups (at least 100): the rate sustained while growing.
stretch = max(100, count // 10)
completions.sort()
slowest = min(
    (stretch / (completions[end] - completions[end - stretch]) for end in range(stretch, len(completions))
     if completions[end] > completions[end - stretch]),
    default=count / seconds)
others = ",".join(f"{status}:{n}" for status, n in sorted(statuses.items()) if status != 201)
print(f"created={created} failures={failures} seconds={seconds:.2f} rate={count / seconds:.0f} "
      f"slowest{stretch}={slowest:.0f} "
      f"p50ms={p50:.1f} p99ms={p99:.1f} statuses={others or 'none'}")
