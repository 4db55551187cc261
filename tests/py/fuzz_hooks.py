"""Schemathesis hooks for fuzz_openapi.py (loaded through SCHEMATHESIS_HOOKS): the
run's token, given as schemathesis auth providers so that its auth checks know it.

`POST /v1/auth/token/revoke-self` revokes the caller's token and every token made from
it: sent with the run's token, the first such case would turn every later request of
the run into a 403. Each revoke-self case therefore gets a fresh token of the run's
policies, made with the root token when the case is generated.

Also: ids of methods and secrets the fuzzer created are fed into its later requests
(below), and every answer is counted by status and by what it created, for the
driver's summary (FUZZ_STATS).
"""

import atexit
import collections
import itertools
import json
import os
import re
import threading

import httpx
import schemathesis

URL = os.environ["FUZZ_URL"].rstrip("/")
ROOT = os.environ["FUZZ_ROOT_TOKEN"]
TOKEN = os.environ["FUZZ_TOKEN"]
POLICIES = os.environ["FUZZ_POLICIES"].split(",")
HEADER = "X-Vault-Token"
REVOKE_SELF = "/v1/auth/token/revoke-self"
_lock = threading.Lock()


def _set(case, token):
    if case.headers is None:
        case.headers = {}
    case.headers[HEADER] = token


@schemathesis.auth(refresh_interval=None).apply_to(method="POST", path=REVOKE_SELF)
class DisposableToken:
    def get(self, case, context):
        r = httpx.post(
            f"{URL}/v1/auth/token/create",
            headers={HEADER: ROOT},
            json={"policies": POLICIES, "ttl": "10m", "display_name": "fuzz-revoke-self"},
            timeout=15,
        )
        r.raise_for_status()
        return r.json()["auth"]["client_token"]

    def set(self, case, data, context):
        _set(case, data)


@schemathesis.auth().skip_for(method="POST", path=REVOKE_SELF)
class RunToken:
    def get(self, case, context):
        return TOKEN

    def set(self, case, data, context):
        _set(case, data)


# ----- ids the fuzzer created, fed back into its later requests -----
# A random UUID names no method and no secret, so generate, validate, code and delete
# would only ever meet 404. Every other well-formed UUID the fuzzer sends in such a
# field is replaced by the id of a method or secret it created itself earlier in the
# run (malformed values, the negative cases, are left alone).

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Methods are shared: a run whose token may not create any starts from those the driver
# lists (FUZZ_METHOD_IDS, made by the run before it); secrets belong to the token's
# entity, so each run collects its own.
_pools = {"method": [m for m in os.environ.get("FUZZ_METHOD_IDS", "").split(",") if m], "secret": []}
_turn = itertools.count()
MFA = "/v1/identity/mfa/method/totp"
# path -> (pool, where the id goes: "path:<name>" or "body:<field>")
_TARGETS = {
    f"{MFA}/{{method_id}}": ("method", "path:method_id"),
    f"{MFA}/generate": ("method", "body:method_id"),
    f"{MFA}/admin-generate": ("method", "body:method_id"),
    f"{MFA}/admin-destroy": ("method", "body:method_id"),
    f"{MFA}/validate": ("method", "body:method_id"),
    "/api/v2/totp/code/{id}": ("secret", "path:id"),
    "/api/v2/totp/secrets/{id}": ("secret", "path:id"),
}


def _known(pool):
    """Every other call: one of the ids the fuzzer created, in turn."""
    with _lock:
        ids = _pools[pool]
        n = next(_turn)
        return ids[(n // 2) % len(ids)] if ids and n % 2 == 0 else None


@schemathesis.hook
def before_call(context, case, **kwargs):
    target = _TARGETS.get(case.operation.path)
    if not target:
        return
    if case.operation.method.upper() == "DELETE" and case.operation.path == f"{MFA}/{{method_id}}":
        # Deleting a method deletes its enrolments: left to random ids, so that what the
        # fuzzer enrolled is still in the database to be counted afterwards.
        return
    pool, where = target
    kind, name = where.split(":")
    box = case.path_parameters if kind == "path" else case.body
    if not isinstance(box, dict) or not isinstance(box.get(name), str) or not _UUID.match(box[name]):
        return
    known = _known(pool)
    if known:
        box[name] = known


def _remember(method, path, response):
    if response.status_code not in (200, 201):
        return
    try:
        body = json.loads(response.text)
    except ValueError:
        return
    if method in ("POST", "PUT") and path == MFA:
        new, pool = (body.get("data") or {}).get("method_id"), "method"
    elif method == "POST" and path == "/api/v2/totp/secrets":
        new, pool = (body.get("totp_secret") or {}).get("id"), "secret"
    else:
        return
    if isinstance(new, str):
        with _lock:
            _pools[pool].append(new)
            del _pools[pool][:-50]


# ----- what the server answered, by status, for fuzz_openapi.py's summary -----

_STATS_FILE = os.environ.get("FUZZ_STATS")
_statuses = collections.Counter()
_created = collections.Counter()
_server_errors = []


def _created_kind(method, path, response):
    """What a successful answer created, if anything."""
    if method == "POST" and path == "/api/v2/totp/secrets" and response.status_code == 201:
        return "agent_secrets"
    if method in ("POST", "PUT") and path == "/v1/identity/mfa/method/totp":
        return "mfa_methods" if response.status_code == 200 else None
    if path in ("/v1/identity/mfa/method/totp/generate", "/v1/identity/mfa/method/totp/admin-generate"):
        if response.status_code == 200:
            try:
                data = json.loads(response.text).get("data")
            except ValueError:
                return None
            # A second generate answers data: null and a warning: nothing new.
            return "mfa_enrolments" if data else None
    if method == "POST" and path == "/api/v1/auth/totp/setup/" and response.status_code == 201:
        return "user_devices"
    return None


@schemathesis.hook
def after_call(context, case, response):
    method = case.operation.method.upper()
    path = case.operation.path
    kind = _created_kind(method, path, response)
    _remember(method, path, response)
    with _lock:
        _statuses[response.status_code] += 1
        if kind:
            _created[kind] += 1
        if response.status_code >= 500 and len(_server_errors) < 20:
            _server_errors.append(f"{method} {path} -> {response.status_code} {response.text[:300]}")


@atexit.register
def _write_stats():
    if _STATS_FILE:
        with open(_STATS_FILE, "w") as f:
            json.dump(
                {
                    "statuses": dict(_statuses),
                    "created": dict(_created),
                    "server_errors": _server_errors,
                },
                f,
            )
