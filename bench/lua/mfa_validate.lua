-- Vault identity MFA validation with a wrong passcode:
-- POST <url> {"method_id": BENCH_METHOD_ID, "entity_id": "<BENCH_ENTITY_PREFIX><i>",
-- "passcode": "000000"}, i picked at random among BENCH_ENTITY_COUNT entities, so that no
-- entity reaches the method's failure limit (100000) in a run. totpd answers 403
-- "invalid passcode" (expected); each one is a durable write.
local reqs = {}

init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  local headers = {
    ["X-Vault-Token"] = os.getenv("BENCH_TOKEN"),
    ["Content-Type"] = "application/json",
  }
  local n = tonumber(os.getenv("BENCH_ENTITY_COUNT")) or 1
  for i = 0, n - 1 do
    local body = string.format('{"method_id":"%s","entity_id":"%s%d","passcode":"000000"}',
      os.getenv("BENCH_METHOD_ID"), os.getenv("BENCH_ENTITY_PREFIX"), i)
    reqs[#reqs + 1] = wrk.format("POST", wrk.path, headers, body)
  end
end

request = function()
  return reqs[math.random(#reqs)]
end
