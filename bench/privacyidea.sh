#!/usr/bin/env bash
# privacyIDEA for bench/run (best effort; BENCH_PRIVACYIDEA=1):
#   privacyidea.sh prepare DIR         venv (cached in bench/.venv-privacyidea) with
#                                      privacyidea and gunicorn; in DIR a pi.cfg on
#                                      SQLite, keys, tables, an admin, piapp.py (the WSGI
#                                      app) and env.sh (PI_VENV, PI_CONFIG) to source
#   privacyidea.sh enroll DIR URL B32  a TOTP token (serial printed) on the running server
# bench/run starts and stops gunicorn itself.
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
VENV=$BENCH/.venv-privacyidea
ADMIN_PASS=bench-admin-pass

prepare() {
  local dir=$1
  if ! [ -x "$VENV/bin/pi-manage" ] || ! [ -x "$VENV/bin/gunicorn" ]; then
    echo "privacyidea: installing privacyidea and gunicorn into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check privacyidea gunicorn
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  cat >"$dir/pi.cfg" <<EOF
SQLALCHEMY_DATABASE_URI = 'sqlite:///$dir/privacyidea.sqlite'
SECRET_KEY = '$(python3 -c 'import secrets; print(secrets.token_hex(24))')'
PI_PEPPER = '$(python3 -c 'import secrets; print(secrets.token_hex(24))')'
PI_ENCFILE = '$dir/enckey'
PI_AUDIT_NO_SIGN = True
PI_NO_RESPONSE_SIGN = True
PI_AUDIT_KEY_PRIVATE = '$dir/private.pem'
PI_AUDIT_KEY_PUBLIC = '$dir/public.pem'
PI_AUDIT_SQL_TRUNCATE = True
PI_LOGCONFIG = '$dir/logging.yaml'
PI_LOGLEVEL = 30
PI_NODE_UUID = '$(python3 -c 'import uuid; print(uuid.uuid4())')'
PI_UUID_FILE = '$dir/uuid.txt'
PI_GNUPG_HOME = '$dir/gpg'
EOF
  cat >"$dir/logging.yaml" <<'EOF'
version: 1
formatters:
  plain:
    format: '[%(asctime)s][%(process)d][%(levelname)s][%(name)s] %(message)s'
handlers:
  stderr:
    class: logging.StreamHandler
    formatter: plain
    level: WARNING
root:
  level: WARNING
  handlers: [stderr]
EOF
  cat >"$dir/piapp.py" <<EOF
from privacyidea.app import create_app

application = create_app(config_name="production", config_file="$dir/pi.cfg", silent=True)
EOF
  export PRIVACYIDEA_CONFIGFILE=$dir/pi.cfg
  cd "$dir"
  # privacyIDEA 3.10 and later (click); older releases had flat commands.
  "$VENV/bin/pi-manage" setup create_enckey || "$VENV/bin/pi-manage" create_enckey
  "$VENV/bin/pi-manage" setup create_audit_keys || "$VENV/bin/pi-manage" create_audit_keys
  "$VENV/bin/pi-manage" setup create_tables || "$VENV/bin/pi-manage" createdb
  "$VENV/bin/pi-manage" admin add admin --password "$ADMIN_PASS" ||
    "$VENV/bin/pi-manage" admin add admin -p "$ADMIN_PASS"
  {
    echo "PI_VENV='$VENV'"
    echo "PI_CONFIG='$dir/pi.cfg'"
  } >"$dir/env.sh"
}

enroll() {
  local url=$2 b32=$3
  "$VENV/bin/python" - "$url" "$b32" "$ADMIN_PASS" <<'EOF'
import base64, json, sys, urllib.parse, urllib.request

url, b32, password = sys.argv[1], sys.argv[2], sys.argv[3]

def call(path, data, token=None):
    body = urllib.parse.urlencode(data).encode()
    req = urllib.request.Request(url + path, data=body, method="POST")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    if token:
        req.add_header("Authorization", token)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")

status, ans = call("/auth", {"username": "admin", "password": password})
if status != 200:
    sys.exit(f"privacyidea: /auth: {status} {ans}")
token = ans["result"]["value"]["token"]
serial = "BENCH0001"
otpkey = base64.b32decode(b32).hex()
status, ans = call("/token/init", {"type": "totp", "serial": serial, "otpkey": otpkey,
                                   "genkey": "0", "otplen": "6", "timeStep": "30"}, token)
if status != 200 or not ans.get("result", {}).get("status"):
    sys.exit(f"privacyidea: /token/init: {status} {ans}")
# Wrong codes must stay real checks, not a failcounter refusal.
call("/token/set", {"serial": serial, "max_failcount": "1000000000"}, token)
status, ans = call("/validate/check", {"serial": serial, "pass": "000000"})
if status != 200:
    sys.exit(f"privacyidea: /validate/check: {status} {ans}")
print(serial)
EOF
}

case "${1:-}" in
  prepare) prepare "$2" ;;
  enroll) enroll "$2" "$3" "$4" ;;
  *)
    echo "usage: $0 prepare DIR | enroll DIR URL BASE32" >&2
    exit 2
    ;;
esac
