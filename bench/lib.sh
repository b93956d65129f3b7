# Shared by the benchmarks (sourced): one wrk run, one table row.

# wrk_row NAME-WIDTH NAME URL SCRIPT CONNECTIONS SECONDS → "name conns requests/s p50 p99 non-2xx",
# without a newline (a caller may add columns)
wrk_row() {
  local width="$1" name="$2" url="$3" script="$4" connections="$5" seconds="$6" threads=2
  [ "$connections" -lt 2 ] && threads=1
  local output; output="$(wrk -t$threads -c"$connections" -d"${seconds}s" --latency -s "$script" "$url")"
  printf "%-${width}s %5s %12s %10s %10s %8s" "$name" "$connections" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$output")" "$(awk '$1 == "50%" {print $2}' <<<"$output")" \
    "$(awk '$1 == "99%" {print $2}' <<<"$output")" "$(awk '/Non-2xx/ {print $NF}' <<<"$output" | grep . || echo 0)"
}
