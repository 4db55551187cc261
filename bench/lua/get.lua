-- GET the URL given to wrk, with BENCH_TOKEN (if set) as X-Vault-Token.
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["X-Vault-Token"] = token
end
