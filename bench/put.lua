-- Durable PUTs of 16-byte values over 1000 keys, as etcd-put.lua does, so the stored data stays
-- the same size across runs and RSS growth between repetitions would mean a leak.
request = function()
  return wrk.format("PUT", "/v1/groups/DataRegion-0/kv/bench/put/" .. math.random(0, 999), nil, "value-0123456789")
end

-- With CAUCUS_TOKEN set (bench/tls.sh's node with --auth-tokens-file), every request carries it.
local token = os.getenv("CAUCUS_TOKEN")
if token then wrk.headers["Authorization"] = "Bearer " .. token end
