#!/usr/bin/env python3
"""Schemathesis over totpd's whole OpenAPI document (GET /v1/sys/openapi), bounded in
time, once with a root token and once with a token holding only the `default` policy.

Each of the two runs is two schemathesis invocations: the stateful phase (which chains
calls through the links it infers from the document), then the examples, coverage and
fuzzing phases, each with its own time budget, so that neither starves the other. A
hook (fuzz_hooks.py) feeds the ids of methods and secrets the fuzzer created into its
later requests, half of the time, so that generate, validate, code and delete get past
404 (see there).

Fails on any 5xx answer and on any response that does not conform to the document
(schemathesis' ST1xx failures: server errors, undocumented status codes or content
types, bodies or headers violating the schema, malformed JSON). Its other findings
(ST2xx-ST4xx: acceptance of invalid input, rejection of valid input, auth probes) are
printed for information. Afterwards it prints what the fuzzer created: counted from
the answers (201 on a secret, 200 with a url on generate), from totpd's metrics, and
read from totpd's database (read-only; the fuzzer also deletes secrets, so the tables
grow by less).

Usage:
    TOTPD_ROOT_TOKEN=... python fuzz_openapi.py --url http://127.0.0.1:8200 \
        --db DATA_DIR/totpd.db [--fuzz-time 45] [--stateful-time 25] [--max-examples 25]
"""

import argparse
import collections
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
# Tables whose growth shows what the fuzzer reached (absent ones are skipped).
TABLES = [
    "agent_secrets",
    "mfa_methods",
    "mfa_secrets",
    "user_devices",
    "recovery_codes",
    "policy_tokens",
    "policies",
    "tokens",
]


def enforced(code):
    """ST1xx: a 5xx, or a response the document does not describe. ST112 (response
    time) needs a limit these runs do not set."""
    return code.startswith("ST1") and code != "ST112"


def counts(db):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        have = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES if t in have}
    finally:
        con.close()


def metrics(url, root):
    """totpd's own counters (GET /v1/sys/metrics), by series."""
    r = httpx.get(url + "/v1/sys/metrics", headers={"X-Vault-Token": root}, timeout=15)
    r.raise_for_status()
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def vault(url, token, method, path, body=None):
    return httpx.request(method, url + path, headers={"X-Vault-Token": token}, json=body, timeout=15)


def invoke(args, env, name, phases, max_time, report_dir):
    """One schemathesis run; returns (ok, summary dict)."""
    tag = f"{name}/{phases}"
    slug = f"{name}-{phases.replace(',', '-')}"
    stats = os.path.join(report_dir, f"stats-{slug}.json")
    report = os.path.join(report_dir, f"report-{slug}.json")
    log = os.path.join(report_dir, f"schemathesis-{slug}.log")
    env = dict(env, FUZZ_STATS=stats)
    st = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    cmd = [
        st,
        "run",
        f"{args.url}/v1/sys/openapi",
        "--url",
        args.url,
        "--phases",
        phases,
        "--checks",
        "all",
        "--max-examples",
        str(args.max_examples),
        "--max-time",
        str(max_time),
        "--workers",
        str(args.workers),
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--no-color",
        "--output-truncate",
        "true",
        "--report",
        "json",
        "--report-json-path",
        report,
        "--report-dir",
        report_dir,
    ]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    print(f"fuzz[{tag}]: schemathesis {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    with open(log, "w") as out:
        # In the report dir: schemathesis keeps a crash cache (.schemathesis/) in its
        # working directory, which would land in the repository and replay old cases.
        proc = subprocess.run(
            cmd,
            env=env,
            cwd=report_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=max_time * 3 + 120,
        )
    secs = time.time() - t0
    try:
        with open(report) as f:
            rep = json.load(f)
    except (OSError, ValueError) as e:
        print(f"fuzz[{tag}]: FAIL: no report ({e}); schemathesis exited {proc.returncode}:")
        print(open(log).read()[-6000:])
        return False, None
    try:
        with open(stats) as f:
            sts = json.load(f)
    except (OSError, ValueError):
        sts = {"statuses": {}, "created": {}, "server_errors": [], "flows": {}}
    statuses = collections.Counter({int(k): v for k, v in sts["statuses"].items()})
    requests = sum(statuses.values())
    fivexx = sum(v for k, v in statuses.items() if k >= 500)
    tc = rep["test_cases"]
    hard = [f for f in rep["failures"] if enforced(f["code"])]
    soft = [f for f in rep["failures"] if not enforced(f["code"])]
    violations = sum(f["count"] for f in hard)
    print(
        f"fuzz[{tag}]: {tc['generated']} cases, {requests} requests in {secs:.0f}s, "
        f"{rep['operations']['tested']}/{rep['operations']['total']} operations; "
        f"statuses {dict(sorted(statuses.items()))}; created {sts.get('created', {})}; "
        f"flow steps {sts.get('flows', {})}"
    )
    print(f"fuzz[{tag}]: 5xx answers: {fivexx}; response conformance failures: {violations}")
    for e in sts["server_errors"]:
        print(f"  5xx: {e}")
    for f in hard:
        print(f"  FAIL {f['code']} {f['title']} ({f['count']}): {', '.join(f['operations'])}")
    for f in soft:
        print(f"  info {f['code']} {f['title']} ({f['count']}): {', '.join(f['operations'])}")
    for e in rep.get("errors") or []:
        print(f"  error: {json.dumps(e)[:500]}")
    ok = not (fivexx or violations or rep.get("errors"))
    if not ok:
        print(f"fuzz[{tag}]: the failures as schemathesis reports them ({log}):")
        text = open(log).read()
        start = text.find("FAILURES")
        print(text[start if start >= 0 else 0 :][:12000])
    if requests == 0:
        ok = False
        print(f"fuzz[{tag}]: FAIL: no request was recorded (hooks not loaded?)")
    return ok, {
        "cases": tc["generated"],
        "requests": requests,
        "5xx": fivexx,
        "violations": violations,
        "created": collections.Counter(sts.get("created", {})),
        "flows": collections.Counter(sts.get("flows", {})),
    }


def run(args, root, name, policies, report_dir):
    """Both invocations with a fresh token of `policies`."""
    r = vault(
        args.url,
        root,
        "POST",
        "/v1/auth/token/create",
        {
            "policies": policies,
            "ttl": "2h",
            "display_name": f"fuzz-{name}",
            "no_default_policy": "default" not in policies,
        },
    )
    r.raise_for_status()
    token = r.json()["auth"]["client_token"]
    # The methods that exist now (the root run's), for a token that may use but not make
    # them: the default policy grants generate and validate.
    listed = vault(args.url, root, "GET", "/v1/identity/mfa/method/totp?list=true")
    methods = listed.json()["data"]["keys"][:20] if listed.status_code == 200 else []
    env = dict(
        os.environ,
        FUZZ_METHOD_IDS=",".join(methods),
        SCHEMATHESIS_HOOKS=os.path.join(HERE, "fuzz_hooks.py"),
        FUZZ_URL=args.url,
        FUZZ_ROOT_TOKEN=root,
        FUZZ_TOKEN=token,
        FUZZ_POLICIES=",".join(policies),
    )
    ok = True
    results = []
    # Stateful first: it follows links from create to delete, so what the fuzzing after
    # it enrols stays in the database to be counted.
    for phases, budget in (
        ("stateful", args.stateful_time),
        ("examples,coverage,fuzzing", args.fuzz_time),
    ):
        good, res = invoke(args, env, name, phases, budget, report_dir)
        ok &= good
        if res:
            results.append(res)
    # The run's token must have lived through the run: otherwise most of it was 403s.
    alive = vault(args.url, token, "GET", "/v1/auth/token/lookup-self").status_code
    if alive != 200:
        ok = False
        print(f"fuzz[{name}]: FAIL: the run's token died during the run (lookup-self: {alive})")
    return ok, results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--db", required=True, help="totpd's database file, read after the runs")
    ap.add_argument("--fuzz-time", type=int, default=45, help="seconds for examples+coverage+fuzzing, per token")
    ap.add_argument("--stateful-time", type=int, default=25, help="seconds for stateful, per token")
    ap.add_argument("--max-examples", type=int, default=25, help="cases per operation and phase")
    ap.add_argument("--workers", type=int, default=1, help="schemathesis workers (threads); more than one trips a CPython 3.11 race in ast.parse inside hypothesis")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--report-dir", help="where to keep schemathesis' logs and reports")
    args = ap.parse_args()
    args.url = args.url.rstrip("/")
    root = os.environ.get("TOTPD_ROOT_TOKEN")
    if not root:
        sys.exit("TOTPD_ROOT_TOKEN must hold totpd's root token")
    report_dir = os.path.abspath(args.report_dir or tempfile.mkdtemp(prefix="totpd-fuzz-"))
    os.makedirs(report_dir, exist_ok=True)

    before = counts(args.db)
    m_before = metrics(args.url, root)
    ok = True
    results = []
    for name, policies in (("root", ["root"]), ("default", ["default"])):
        good, res = run(args, root, name, policies, report_dir)
        ok &= good
        results += res
    after = counts(args.db)
    created = collections.Counter()
    for r in results:
        created += r["created"]
    print(
        "fuzz: created, counted from the answers: "
        + ", ".join(f"{k} {created.get(k, 0)}" for k in ("agent_secrets", "mfa_methods", "mfa_enrolments", "user_devices"))
    )
    print(
        "fuzz: rows in the database, before -> after: "
        + ", ".join(f"{t} {before.get(t, 0)} -> {n}" for t, n in after.items())
    )
    m_after = metrics(args.url, root)
    grew = {k: int(v - m_before.get(k, 0)) for k, v in m_after.items() if k.startswith(("totpd_requests_total", "totpd_qr"))}
    print("fuzz: totpd's metrics over the runs: " + ", ".join(f"{k} +{v}" for k, v in grew.items()))
    server_5xx = grew.get('totpd_requests_total{class="5xx"}', 0)
    if server_5xx:
        ok = False
        print(f"fuzz: FAIL: totpd counted {server_5xx} 5xx answers")
    for key, what in (("agent_secrets", "agent secrets"), ("mfa_enrolments", "MFA enrolments")):
        if created.get(key, 0) <= 0:
            ok = False
            print(f"fuzz: FAIL: the fuzzer created no {what}: it never got past validation")
    # The linked flows must have run end to end at least once: a Nitride token spent on
    # its policy, and a user set up, activated and logged in.
    flows = collections.Counter()
    for r in results:
        flows += r["flows"]
    print("fuzz: flow steps that succeeded: " + ", ".join(f"{k} {v}" for k, v in sorted(flows.items())))
    for key, what in (("nitride_spends", "Nitride token was spent"), ("user_logins", "user login (verify/) succeeded")):
        if flows.get(key, 0) <= 0:
            ok = False
            print(f"fuzz: FAIL: no {what}: the linked flow never ran through")
    print(
        f"fuzz: total: {sum(r['cases'] for r in results)} cases, "
        f"{sum(r['requests'] for r in results)} requests, "
        f"{sum(r['5xx'] for r in results)} 5xx, "
        f"{sum(r['violations'] for r in results)} schema violations"
    )
    print("fuzz: PASS" if ok else "fuzz: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
