"""Schemathesis hooks for fuzz_openapi.py (loaded through SCHEMATHESIS_HOOKS): the
run's token, given as schemathesis auth providers so that its auth checks know it.

`POST /v1/auth/token/revoke-self` revokes the caller's token and every token made from
it: sent with the run's token, the first such case would turn every later request of
the run into a 403. Each revoke-self case therefore gets a fresh token of the run's
policies, made with the root token when the case is generated.

Also: ids of methods and secrets the fuzzer created are fed into its later requests
(below); the two flows the document links (a Nitride token spent on its policy, and a
user's setup, activate, challenge and verify) get what no link can carry, a future
expiration and current TOTP codes (further below); and every answer is counted by
status, by what it created and by the flow steps that succeeded, for the driver's
summary (FUZZ_STATS).
"""

import atexit
import base64
import collections
import hashlib
import hmac
import itertools
import json
import os
import re
import struct
import threading
import time
import urllib.parse

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


# ----- the linked flows: what a link cannot carry -----
# The document links a policy write to a one-time token for it, the token to the one
# write it allows, setup/ to activate/, activate/ to challenge/ and challenge/ to
# verify/ (the temp_token). A link cannot compute a future expiration or a TOTP code,
# so every other such call gets one here: an expiration ten minutes ahead, the code of
# the device set up last, the run's own user, or a code of an active device (a step not
# yet used) or one of its recovery codes. The rest keep their generated values, the
# negative cases.

NITRIDE = "/v1/auth/{mount}/totp"
USER = "/api/v1/auth/totp/"
_user = {"entity": None, "pending": {}, "active": {}, "recovery": [], "used": set()}
_flow_turn = itertools.count()
_flows = collections.Counter()
_policies = []  # policies the run wrote (and has not deleted), for one-time tokens
_temp_tokens = []  # issued by challenge/, to tell verify/ cases that came by the link
_steps = {}  # case id -> (secret, step) of the code a verify/ case was given


def _totp(secret_b32, step):
    """RFC 6238 with SHA1, 6 digits (the user surface's fixed parameters)."""
    key = base64.b32decode(secret_b32.upper() + "=" * (-len(secret_b32) % 8))
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    return f"{(struct.unpack('>I', mac[off:off + 4])[0] & 0x7FFFFFFF) % 1_000_000:06d}"


def _help_flow():
    return next(_flow_turn) % 2 == 0


def _flow_before(case):
    path = case.operation.path
    method = case.operation.method.upper()
    body = case.body
    if not isinstance(body, dict):
        return
    # A verify/ case carrying a temp_token that challenge/ issued came through the link:
    # it always gets a good code (a wrong one would count towards the user's lock and
    # hold up the flow); every other case gets help every other time.
    linked = path == USER + "verify/" and body.get("temp_token") in _temp_tokens
    if not linked and not _help_flow():
        return
    now = int(time.time())
    with _lock:
        if path == NITRIDE and method in ("PUT", "POST"):
            body["expiration"] = now + 600
            if _policies:
                body["policy"] = _policies[next(_flow_turn) % len(_policies)]
                case.path_parameters["mount"] = "ratls"
        elif path == USER + "activate/" and _user["pending"]:
            name, secret = next(reversed(_user["pending"].items()))
            body["token"] = _totp(secret, now // 30)
            if name is None:
                body.pop("name", None)
            else:
                body["name"] = name
        elif path == USER + "challenge/" and _user["entity"]:
            body["user"] = _user["entity"]
        elif path == USER + "verify/" and (_user["active"] or _user["recovery"]):
            if not linked and _temp_tokens:
                # Outside the link (the fuzzing phases), a temp_token challenge/ issued.
                body["temp_token"] = _temp_tokens[-1]
            # A device takes no step at or before the last it accepted: only later ones
            # in the window (now and the next) are fresh; otherwise a recovery code.
            last = {}
            for sec, st in _user["used"]:
                last[sec] = max(st, last.get(sec, st))
            steps = [(sec, st) for sec in _user["active"].values() for st in (now // 30, now // 30 + 1)]
            fresh = [(sec, st) for sec, st in steps if st > last.get(sec, st - 1)]
            if fresh and (not _user["recovery"] or next(_flow_turn) % 4):
                sec, st = fresh[0]
                body["token"] = _totp(sec, st)
                _steps[case.id] = (sec, st)
            elif _user["recovery"]:
                body["token"] = _user["recovery"][0]


def _flow_after(case, response):
    path = case.operation.path
    method = case.operation.method.upper()
    body = case.body if isinstance(case.body, dict) else {}
    try:
        data = json.loads(response.text)
    except ValueError:
        data = None
    ok = response.status_code in (200, 201, 204)
    if os.environ.get("FUZZ_TRACE") and (path.startswith(("/v1/sys/policies/acl", NITRIDE, USER))):
        print(f"TRACE {method} {path} {case.path_parameters} {str(body)[:200]} -> {response.status_code} {response.text[:200]}", flush=True)
    with _lock:
        if path == NITRIDE and method in ("PUT", "POST") and ok:
            _flows["nitride_tokens"] += 1
        elif path == "/v1/sys/policies/acl/{name}" and method in ("PUT", "POST") and ok:
            if isinstance(body.get("totp"), str):
                _flows["nitride_spends"] += 1
            name = case.path_parameters.get("name", "").lower()
            if name and name not in _policies:
                _policies.append(name)
                del _policies[:-20]
        elif path == "/v1/sys/policies/acl/{name}" and method == "DELETE" and ok:
            name = case.path_parameters.get("name", "").lower()
            if name in _policies:
                _policies.remove(name)
        elif path == USER + "setup/" and response.status_code == 201 and isinstance(data, dict):
            secret = data.get("secret_key")
            uri = data.get("provisioning_uri") or ""
            # otpauth://totp/<issuer>:<user>?...: the caller's entity is the label's account.
            label = urllib.parse.unquote(urllib.parse.urlparse(uri).path.lstrip("/"))
            _user["entity"] = label.rsplit(":", 1)[-1] or _user["entity"]
            name = body.get("name") if isinstance(body.get("name"), str) else None
            if not name and not _user["active"]:
                _user["pending"].clear()
            if isinstance(secret, str):
                _user["pending"][name.strip() if name else None] = secret
        elif path == USER + "activate/" and response.status_code == 200 and isinstance(data, dict):
            _flows["user_activations"] += 1
            for name, secret in list(_user["pending"].items()):
                if body.get("token") == _totp(secret, int(time.time()) // 30) or len(_user["pending"]) == 1:
                    _user["active"][name] = _user["pending"].pop(name)
                    _user["used"].add((secret, int(time.time()) // 30))
                    break
            if data.get("recovery_codes"):
                _user["recovery"] = list(data["recovery_codes"])
        elif path == USER + "deactivate/" and response.status_code == 200:
            _user.update(pending={}, active={}, recovery=[])
        elif path == USER + "challenge/" and response.status_code == 201:
            _flows["user_challenges"] += 1
            if isinstance(data, dict) and isinstance(data.get("temp_token"), str):
                _temp_tokens.append(data["temp_token"])
                del _temp_tokens[:-50]
        elif path == USER + "verify/":
            step = _steps.pop(case.id, None)
            if response.status_code == 200:
                _flows["user_logins"] += 1
                if body.get("temp_token") in _temp_tokens:
                    _temp_tokens.remove(body["temp_token"])  # single use
                if step:
                    _user["used"].add(step)
                elif body.get("token") in _user["recovery"]:
                    _user["recovery"].remove(body["token"])


@schemathesis.hook
def before_call(context, case, **kwargs):
    _flow_before(case)
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
    _flow_after(case, response)
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
                    "flows": dict(_flows),
                },
                f,
            )
