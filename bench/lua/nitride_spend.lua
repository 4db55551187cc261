-- Spending Nitride one-time tokens: PUT <url> (a policy) {"policy": ..., "totp": uuid},
-- one uuid of BENCH_NITRIDE_FILE per request, each spent once (204 expected; a durable
-- write that marks the token spent and updates the policy in one transaction). The run
-- stops when the uuids run out; the at most c requests already sent by then carry a
-- uuid that does not exist and are refused (403, counted as non-2xx).
local uuids = {}
local i = 0
local headers

init = function(args)
  for line in io.lines(os.getenv("BENCH_NITRIDE_FILE")) do
    uuids[#uuids + 1] = line
  end
  headers = {
    ["X-Vault-Token"] = os.getenv("BENCH_TOKEN"),
    ["Content-Type"] = "application/json",
  }
end

local policy = '{"path":{"api/v2/totp/*":{"capabilities":["read"]}}}'

request = function()
  i = i + 1
  local uuid = uuids[i] or "00000000-0000-4000-8000-000000000000"
  return wrk.format("PUT", wrk.path, headers,
    string.format('{"policy":%s,"totp":"%s"}', policy, uuid))
end

response = function(status, headers, body)
  if i >= #uuids then
    wrk.thread:stop()
  end
end
