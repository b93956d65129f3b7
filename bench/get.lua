-- GETs spread over the keys bench/run.sh preloads (bench/get/0 … bench/get/999).
request = function()
  return wrk.format("GET", "/v1/groups/DataRegion-0/kv/bench/get/" .. math.random(0, 999) .. "?raw=true")
end
