-- Nitride one-time policy tokens: PUT <url> {"policy": BENCH_NITRIDE_POLICY,
-- "expiration": now + 1 h}, with BENCH_TOKEN (root). Each answer's uuid is appended to
-- BENCH_NITRIDE_FILE, for the spend run that follows. Each create is a durable write.
local out
local req

init = function(args)
  out = assert(io.open(os.getenv("BENCH_NITRIDE_FILE"), "a"))
  out:setvbuf("line")
  local headers = {
    ["X-Vault-Token"] = os.getenv("BENCH_TOKEN"),
    ["Content-Type"] = "application/json",
  }
  local body = string.format('{"policy":"%s","expiration":%d}',
    os.getenv("BENCH_NITRIDE_POLICY"), os.time() + 3600)
  req = wrk.format("PUT", wrk.path, headers, body)
end

request = function()
  return req
end

response = function(status, headers, body)
  local uuid = body:match('"uuid":"([0-9a-f%-]+)"')
  if status == 200 and uuid then
    out:write(uuid, "\n")
  end
end
