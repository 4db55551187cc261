-- Vault TOTP engine validation with random 6-digit codes:
-- POST <url> {"code": "<random>"}. Expected: 200 {"valid": false}, or 400 "code already
-- used" when a random code repeats within the window (wrk counts those as non-2xx).
local token = os.getenv("BENCH_TOKEN")
local path

init = function(args)
  path = wrk.path
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

request = function()
  local body = string.format('{"code":"%06d"}', math.random(0, 999999))
  return wrk.format("POST", path,
    { ["X-Vault-Token"] = token, ["Content-Type"] = "application/json" }, body)
end
