#!/usr/bin/env bash
# Soak run of totpd: wrk 90/10 mix of GET code / MFA validate (wrong code) for SOAK_SECS,
# sampling RSS/HWM/threads/fds/metrics every 10 s into a CSV.
# Env: SOAK_BIN (default target/release/totpd), SOAK_SECS (1800), SOAK_CONNS (16),
#      SOAK_PORT (18200), SOAK_OUT (CSV path, default $TMP/../soak.csv), SOAK_KEEP=1 keeps data dir.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SOAK_BIN:-target/release/totpd}
SECS=${SOAK_SECS:-1800}
CONNS=${SOAK_CONNS:-16}
PORT=${SOAK_PORT:-18200}
WORK=$(mktemp -d /tmp/totpd-soak.XXXXXX)
TMP=$WORK/data
mkdir -p "$TMP"
OUT=${SOAK_OUT:-$TMP/../soak.csv}
BASE=http://127.0.0.1:$PORT
LOG=$WORK/daemon.log
echo "soak: bin=$BIN secs=$SECS conns=$CONNS port=$PORT dir=$WORK csv=$OUT"

TOTPD_LOG=warn "$BIN" serve --dev --data-dir "$TMP" --listen 127.0.0.1:$PORT >"$LOG" 2>&1 &
PID=$!
WRKPID=
cleanup() {
  [ -n "$WRKPID" ] && kill "$WRKPID" 2>/dev/null || true
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  [ "${SOAK_KEEP:-0}" = 1 ] || rm -rf "$TMP"
}
trap cleanup EXIT

for _ in $(seq 1 100); do [ -S "$TMP/totpd.sock" ] && [ -s "$TMP/root-token" ] && break; sleep 0.1; done
[ -S "$TMP/totpd.sock" ] || { echo "daemon did not start"; cat "$LOG"; exit 1; }
TOKEN=$(tr -d '\n' <"$TMP/root-token")
for _ in $(seq 1 50); do curl -s -o /dev/null "$BASE/v1/sys/metrics" -H "X-Vault-Token: $TOKEN" && break; sleep 0.1; done

api() { # method path [json]
  curl -sS -X "$1" "$BASE$2" -H "X-Vault-Token: $TOKEN" -H 'Content-Type: application/json' ${3:+-d "$3"}
}
SECRET_ID=$(api POST /api/v2/totp/secrets '{"secret":"JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP","label":"soak"}' | jq -r '.totp_secret.id')
METHOD_ID=$(api POST /v1/identity/mfa/method/totp '{"issuer":"Soak","max_validation_attempts":100000}' | jq -r '.data.method_id')
[ -n "$SECRET_ID" ] && [ "$SECRET_ID" != null ] || { echo "no secret id"; exit 1; }
[ -n "$METHOD_ID" ] && [ "$METHOD_ID" != null ] || { echo "no method id"; exit 1; }
for n in $(seq 0 15); do
  api POST /v1/identity/mfa/method/totp/admin-generate "{\"method_id\":\"$METHOD_ID\",\"entity_id\":\"soak-$n\"}" >/dev/null
done
echo "soak: secret=$SECRET_ID method=$METHOD_ID pid=$PID"
# sanity
echo "soak: GET code -> $(curl -s -o /dev/null -w '%{http_code}' "$BASE/api/v2/totp/code/$SECRET_ID" -H "X-Vault-Token: $TOKEN")," \
     "validate -> $(curl -s -o /dev/null -w '%{http_code}' -X POST "$BASE/v1/identity/mfa/method/totp/validate" -H "X-Vault-Token: $TOKEN" -H 'Content-Type: application/json' -d "{\"method_id\":\"$METHOD_ID\",\"entity_id\":\"soak-0\",\"passcode\":\"000000\"}")"

LUA=$WORK/soak.lua
cat >"$LUA" <<LUAEOF
local token = "$TOKEN"
local get_path = "/api/v2/totp/code/$SECRET_ID"
local method = "$METHOD_ID"
status = {}  -- global: read back per thread in done()
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  math.randomseed(os.time())
  status = {}
end
function request()
  if math.random(10) == 1 then
    local body = '{"method_id":"' .. method .. '","entity_id":"soak-' .. math.random(0, 15) .. '","passcode":"000000"}'
    return wrk.format("POST", "/v1/identity/mfa/method/totp/validate",
      {["X-Vault-Token"] = token, ["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", get_path, {["X-Vault-Token"] = token})
end
function response(s, h, b)
  status[s] = (status[s] or 0) + 1
end
function done(summary, latency, requests)
  local agg = {}
  for _, t in ipairs(threads) do
    local st = t:get("status")
    if st then for k, v in pairs(st) do agg[k] = (agg[k] or 0) + v end end
  end
  io.write("status breakdown:\n")
  for k, v in pairs(agg) do io.write(string.format("  %s: %d (%.2f%%)\n", k, v, 100 * v / summary.requests)) end
end
LUAEOF

metric() { # name
  curl -s "$BASE/v1/sys/metrics" -H "X-Vault-Token: $TOKEN" | awk -v m="$1" '$1==m || index($1, m"{")==1 {s+=$NF; f=1} END {if (f) printf "%d", s; else printf "NA"}'
}
unlock_all() {
  for n in $(seq 0 15); do
    api POST /v1/identity/mfa/method/totp/admin-unlock "{\"method_id\":\"$METHOD_ID\",\"entity_id\":\"soak-$n\"}" >/dev/null 2>&1 || true
  done
}

echo "t_s,phase,vmrss_kb,vmhwm_kb,threads,fds,requests_total,log_lines_dropped" >"$OUT"
sample() { # t phase
  local st rss hwm thr fds
  st=$(cat /proc/$PID/status)
  rss=$(awk '/^VmRSS:/{print $2}' <<<"$st"); hwm=$(awk '/^VmHWM:/{print $2}' <<<"$st")
  thr=$(awk '/^Threads:/{print $2}' <<<"$st")
  fds=$(ls /proc/$PID/fd | wc -l)
  echo "$1,$2,$rss,$hwm,$thr,$fds,$(metric totpd_requests_total),$(metric totpd_log_lines_dropped_total)" >>"$OUT"
}

START=$(date +%s)
echo "soak: wrk start $(date -u +%FT%TZ)"
wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "$LUA" "$BASE" >"$WORK/wrk.out" 2>&1 &
WRKPID=$!
sleep 1; sample 1 run
last_unlock=$START
while kill -0 "$WRKPID" 2>/dev/null; do
  sleep 10
  kill -0 "$PID" 2>/dev/null || { echo "daemon died"; break; }
  now=$(date +%s)
  if (( now - last_unlock >= 60 )); then unlock_all; last_unlock=$now; fi
  : >"$LOG"   # keep the daemon's stderr file small
  kill -0 "$WRKPID" 2>/dev/null && sample $((now - START)) run
done
wait "$WRKPID" || true
WRKPID=
sample $(( $(date +%s) - START )) post
echo "soak: wrk end $(date -u +%FT%TZ)"
cat "$WORK/wrk.out"

awk -F, -v secs="$SECS" '
  NR==1 {next}
  { t=$1; rss[NR]=$3; tt[NR]=t; n=NR; req=$7; drop=$8; hwm=$4
    if ($2!="run") next   # threads/fds min/max only while wrk is running
    if (thmin=="" || $5<thmin) thmin=$5; if ($5>thmax) thmax=$5
    if (fdmin=="" || $6<fdmin) fdmin=$6; if ($6>fdmax) fdmax=$6 }
  function at(target,   i, best, bd, d) { bd=1e18; for (i=2;i<=n;i++){d=tt[i]-target; if(d<0)d=-d; if(d<bd){bd=d;best=i}} return best }
  END {
    i5=at(300); i10=at(600)
    printf "summary:\n"
    printf "  RSS at %ss (5 min): %d kB\n", tt[i5], rss[i5]
    printf "  RSS at %ss (10 min): %d kB\n", tt[i10], rss[i10]
    printf "  RSS at end (%ss): %d kB (VmHWM %d kB)\n", tt[n], rss[n], hwm
    printf "  RSS growth end - 10 min: %+d kB\n", rss[n]-rss[i10]
    printf "  threads min/max (during wrk): %d/%d\n", thmin, thmax
    printf "  fds min/max (during wrk): %d/%d\n", fdmin, fdmax
    printf "  totpd_requests_total: %s\n", req
    printf "  totpd_log_lines_dropped_total: %s\n", drop
  }' "$OUT"
echo "csv: $OUT"
