#!/usr/bin/env python3
"""Sendblue's Python SDK (PyPI `sendblue`, module `sendblue_api`) against totpd's
authenticator for agents (`/api/v2/totp`), with strict response validation.

The SDK's base_url is totpd's TCP address; totpd's token goes in the SDK's
default_headers (the SDK's own sb-api-key-id / sb-api-secret-key headers are sent too,
and ignored by totpd). The token holds only a policy granting `api/v2/totp/*`.
Every code is checked against pyotp, an independent TOTP implementation.

Usage:
    TOTPD_ROOT_TOKEN=... python sendblue_agent.py --url http://127.0.0.1:8200
Exit status 0 when every call answered as expected.
"""

import argparse
import json
import os
import sys
import time
import urllib.parse
import uuid

import httpx
import pyotp
import sendblue_api
from sendblue_api import SendblueAPI

AGENT_POLICY = {
    "path": {"api/v2/totp/*": {"capabilities": ["create", "read", "update", "delete", "list"]}}
}


class Failed(Exception):
    pass


def check(cond, what, *detail):
    if not cond:
        raise Failed(what + ("" if not detail else ": " + " ".join(map(repr, detail))))


def root_call(url, token, method, path, body=None):
    r = httpx.request(
        method, url + path, headers={"X-Vault-Token": token}, json=body, timeout=15
    )
    check(r.status_code in (200, 204), f"{method} {path}", r.status_code, r.text)
    return r.json() if r.content else None


def make_token(url, root, policy_name):
    """A token with only the agent policy (no default policy), for its own entity."""
    root_call(url, root, "PUT", f"/v1/sys/policies/acl/{policy_name}", {"policy": json.dumps(AGENT_POLICY)})
    a = root_call(
        url,
        root,
        "POST",
        "/v1/auth/token/create",
        {"policies": [policy_name], "no_default_policy": True, "ttl": "10m"},
    )["auth"]
    check(a["policies"] == [policy_name], "the token holds only the agent policy", a)
    return a["client_token"]


def sdk(url, headers):
    return SendblueAPI(
        api_key="unused-by-totpd",
        api_secret="unused-by-totpd",
        base_url=url,
        default_headers=headers,
        max_retries=0,
        timeout=15,
        _strict_response_validation=True,
    )


def reference_codes(secret, algorithm, digits, period, t0, t1):
    """The codes pyotp gives for every step from t0 to t1 (a request may cross a step)."""
    digest = {"SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}[algorithm]
    totp = pyotp.TOTP(secret, digits=digits, interval=period, digest=digest)
    return {totp.at(t) for t in range(int(t0), int(t1) + 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="totpd's TCP address, http://host:port")
    args = ap.parse_args()
    url = args.url.rstrip("/")
    root = os.environ.get("TOTPD_ROOT_TOKEN")
    if not root:
        sys.exit("TOTPD_ROOT_TOKEN must hold totpd's root token")
    sfx = uuid.uuid4().hex[:8]
    calls = []

    def step(name, fn):
        try:
            fn()
            calls.append((name, None))
            print(f"  ok   {name}")
        except Exception as e:  # noqa: BLE001 - reported, then the run goes on
            calls.append((name, f"{type(e).__name__}: {e}"))
            print(f"  FAIL {name}: {type(e).__name__}: {e}")

    token = make_token(url, root, f"agent-{sfx}")
    other = make_token(url, root, f"agent-other-{sfx}")
    # Both header forms totpd takes: Vault's, and a bearer token.
    c = sdk(url, {"X-Vault-Token": token})
    cb = sdk(url, {"Authorization": f"Bearer {token}"})
    co = sdk(url, {"X-Vault-Token": other})
    st = {}

    seed = pyotp.random_base32(32)  # 160 bits
    uri_seed = pyotp.random_base32(32)
    uri = (
        f"otpauth://totp/GitHub:ci-bot-{sfx}?secret={uri_seed}"
        "&issuer=GitHub&algorithm=SHA256&digits=8&period=60"
    )

    def create_secret():
        raw = c.v2.totp.secrets.with_raw_response.create(
            secret=seed, label=f"acme-{sfx}", issuer="Acme"
        )
        r = raw.parse()
        s = r.totp_secret
        st["seed"] = (s.id, seed, "SHA1", 6, 30)
        check(raw.status_code == 201, "201 Created", raw.status_code)
        check(r.status == "success", "status", r)
        check(s.secret == seed, "the seed is returned once, as given", s.secret)
        check(s.label == f"acme-{sfx}" and s.issuer == "Acme", "label and issuer", s)
        check((s.algorithm, s.digits, s.period) == ("SHA1", 6, 30), "defaults", s)
        check(s.created_at is not None and s.id, "id and created_at", s)

    def create_uri():
        r = c.v2.totp.secrets.create(uri=uri)
        s = r.totp_secret
        st["uri"] = (s.id, uri_seed, "SHA256", 8, 60)
        check(s.secret == uri_seed, "the uri's seed", s.secret)
        check(s.label == f"ci-bot-{sfx}" and s.issuer == "GitHub", "label and issuer from the uri", s)
        check((s.algorithm, s.digits, s.period) == ("SHA256", 8, 60), "parameters from the uri", s)

    def create_generated():
        r = cb.v2.totp.secrets.create(label=f"generated-{sfx}", issuer="Gen", algorithm="SHA512")
        s = r.totp_secret
        st["gen"] = (s.id, s.secret, "SHA512", 6, 30)
        check(s.secret and len(s.secret) >= 16, "a generated seed is returned", s.secret)
        extra = getattr(s, "otpauth_uri", None)
        check(isinstance(extra, str), "otpauth_uri given for a generated secret", s)
        p = pyotp.parse_uri(extra)
        check(p.secret == s.secret, "otpauth_uri carries the same seed")
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(extra).query))
        check(q.get("algorithm", "SHA1") == "SHA512", "otpauth_uri: SHA512", extra)
        check(len(pyotp.TOTP(s.secret).byte_secret()) == 64, "SHA512: a 64-byte seed", s.secret)

    def create_bad():
        try:
            c.v2.totp.secrets.create(secret="JBSWY3DP", label="short")
        except sendblue_api.BadRequestError as e:
            check(e.status_code == 400, "400", e.status_code)
            check(e.body.get("status") == "error" and "secret" in e.body.get("error", ""),
                  "the agent API's error shape", e.body)
            return
        raise Failed("a 40-bit seed was accepted")

    def list_secrets():
        r = c.v2.totp.secrets.list()
        check(r.status == "success", "status", r)
        ids = {s.id for s in r.totp_secrets}
        want = {st[k][0] for k in ("seed", "uri", "gen") if k in st}
        check(ids == want, "exactly the three secrets", ids, want)
        for s in r.totp_secrets:
            check(s.secret is None, "list never shows a seed", s)
            check(s.created_at is not None and s.algorithm in ("SHA1", "SHA256", "SHA512"), "fields", s)

    def codes():
        for k in ("seed", "uri", "gen"):
            sid, secret, alg, digits, period = st[k]
            t0 = time.time()
            r = c.v2.totp.get_code(sid)
            t1 = time.time()
            check(r.status == "success", "status", r)
            check(isinstance(r.code, str) and len(r.code) == digits, f"{k}: {digits} digits", r.code)
            check(r.code in reference_codes(secret, alg, digits, period, t0, t1),
                  f"{k}: the code pyotp computes", r.code)
            check(1 <= r.expires_in <= period, f"{k}: expires_in within the period", r.expires_in)
            check(getattr(r, "period", None) == period, f"{k}: period", r)

    def isolation():
        r = co.v2.totp.secrets.list()
        check(r.totp_secrets == [], "another entity sees none of them", r)
        try:
            co.v2.totp.get_code(st["seed"][0])
        except sendblue_api.NotFoundError:
            return
        raise Failed("another entity read a code")

    def delete():
        for k in ("seed", "uri", "gen"):
            r = c.v2.totp.secrets.delete(st[k][0])
            check(r.status == "success", "deleted", r)
        try:
            c.v2.totp.get_code(st["seed"][0])
            raise Failed("a deleted secret still gives codes")
        except sendblue_api.NotFoundError as e:
            check(e.body.get("status") == "error", "error shape", e.body)
        try:
            c.v2.totp.secrets.delete(st["seed"][0])
            raise Failed("a deleted secret deleted twice")
        except sendblue_api.NotFoundError:
            pass
        check(c.v2.totp.secrets.list().totp_secrets == [], "nothing left")

    def no_token():
        anon = sdk(url, {})
        try:
            anon.v2.totp.secrets.list()
        except (sendblue_api.AuthenticationError, sendblue_api.PermissionDeniedError) as e:
            check(e.body.get("status") == "error", "error shape", e.body)
            return
        raise Failed("listed without a token over TCP")

    step("create with a secret (201, seed echoed once)", create_secret)
    step("create with an otpauth uri", create_uri)
    step("create with neither: generated, with otpauth_uri (bearer token)", create_generated)
    step("create with a too-short seed: 400", create_bad)
    step("list: three, no seeds", list_secrets)
    step("get_code: every code matches pyotp", codes)
    step("another entity: empty list, 404 on the code", isolation)
    step("delete: all three, then 404", delete)
    step("no token over TCP: refused", no_token)

    failed = [n for n, e in calls if e]
    print(f"sendblue: {len(calls) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
