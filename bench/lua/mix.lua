-- 90% agent code reads (GET BENCH_CODE_PATH), 10% wrong-code MFA validations (POST
-- BENCH_VALIDATE_PATH for one of BENCH_ENTITY_COUNT entities, answered 403: expected).
-- Requests are chosen at random.
local read_req
local write_reqs = {}

init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  local token = os.getenv("BENCH_TOKEN")
  read_req = wrk.format("GET", os.getenv("BENCH_CODE_PATH"), { ["X-Vault-Token"] = token })
  local n = tonumber(os.getenv("BENCH_ENTITY_COUNT")) or 1
  for i = 0, n - 1 do
    local body = string.format('{"method_id":"%s","entity_id":"%s%d","passcode":"000000"}',
      os.getenv("BENCH_METHOD_ID"), os.getenv("BENCH_ENTITY_PREFIX"), i)
    write_reqs[#write_reqs + 1] = wrk.format("POST", os.getenv("BENCH_VALIDATE_PATH"),
      { ["X-Vault-Token"] = token, ["Content-Type"] = "application/json" }, body)
  end
end

request = function()
  if math.random(100) <= 90 then
    return read_req
  end
  return write_reqs[math.random(#write_reqs)]
end
