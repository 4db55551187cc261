-- The user login step with a wrong, well-formed recovery code: POST <url>
-- {"temp_token": BENCH_TEMP_TOKEN, "token": "0000-0000-0000-0000-0000"}. Each request is
-- one argon2id verify (19 MiB, 2 passes) under the daemon's bound on concurrent hashes;
-- the answer is 401 (expected). The temp_token survives wrong codes; the user's lock (5
-- failures) is looked at after the hash, so every request costs the hash.
local req

init = function(args)
  local body = string.format('{"temp_token":"%s","token":"0000-0000-0000-0000-0000"}',
    os.getenv("BENCH_TEMP_TOKEN"))
  req = wrk.format("POST", wrk.path, { ["Content-Type"] = "application/json" }, body)
end

request = function()
  return req
end
