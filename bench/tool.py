#!/usr/bin/env python3
"""Helpers for bench/run (standard library only): HTTP calls for the setup, a free
port, totpd's metrics, the results file (JSON lines) and RESULTS.md.

  tool.py port
  tool.py req METHOD URL [--token T] [--data JSON] [--form] [--expect 200,204] [--field a.b]
  tool.py wait URL [--timeout SECS]
  tool.py metrics URL TOKEN                      one JSON line: totpd's counters
  tool.py meta RESULTS KEY VALUE                 a fact about the run
  tool.py record RESULTS --workload W --target T --c N --log WRK_LOG [...]
  tool.py report RESULTS OUT_MD                  writes OUT_MD and prints it
"""

import argparse
import json
import socket
import sys
import time
import urllib.error
import urllib.request


# ----- HTTP -----

def http(method, url, token=None, data=None, form=False, timeout=10):
    body = None
    headers = {}
    if token:
        headers["X-Vault-Token"] = token
    if data is not None:
        body = data.encode()
        headers["Content-Type"] = (
            "application/x-www-form-urlencoded" if form else "application/json")
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def dig(obj, dotted):
    for part in dotted.split("."):
        if isinstance(obj, list):
            obj = obj[int(part)]
        else:
            obj = obj[part]
    return obj


def cmd_req(a):
    status, body = http(a.method, a.url, a.token, a.data, a.form)
    expect = {int(s) for s in a.expect.split(",")} if a.expect else None
    if expect is not None and status not in expect:
        print(f"bench: {a.method} {a.url}: HTTP {status} (wanted {a.expect}): {body[:500]}",
              file=sys.stderr)
        return 1
    if a.field:
        try:
            v = dig(json.loads(body), a.field)
        except (ValueError, KeyError, IndexError, TypeError):
            print(f"bench: {a.method} {a.url}: no {a.field} in {body[:500]}", file=sys.stderr)
            return 1
        print(v if isinstance(v, str) else json.dumps(v))
    elif a.status:
        print(status)
    else:
        print(body)
    return 0


def cmd_totp(a):
    """The current RFC 6238 code (SHA1, 6 digits, 30 s) of a base32 secret."""
    import base64
    import hashlib
    import hmac
    import struct
    import time
    key = base64.b32decode(a.secret.upper() + "=" * (-len(a.secret) % 8))
    mac = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    print(f"{(struct.unpack('>I', mac[off:off + 4])[0] & 0x7FFFFFFF) % 1_000_000:06d}")
    return 0


def cmd_wait(a):
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        try:
            status, _ = http("GET", a.url, timeout=2)
            if status < 500:
                return 0
        except OSError:
            pass
        time.sleep(0.2)
    print(f"bench: {a.url} did not answer within {a.timeout}s", file=sys.stderr)
    return 1


def cmd_port(_a):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()
    return 0


def cmd_metrics(a):
    """totpd's verification outcomes and writer batches, from /v1/sys/metrics."""
    status, text = http("GET", a.url.rstrip("/") + "/v1/sys/metrics", a.token)
    snap = {"verifications": {}, "batch_sum": 0, "batch_count": 0, "requests": {}}
    if status != 200:
        print(json.dumps(snap))
        return 0
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        try:
            n = float(value)
        except ValueError:
            continue
        if name.startswith("totpd_verifications_total{"):
            labels = dict(kv.split("=", 1) for kv in name[name.index("{") + 1:-1].split(","))
            key = labels.get("surface", "").strip('"') + "/" + labels.get(
                "outcome", labels.get("reason", "")).strip('"')
            snap["verifications"][key] = n
        elif name == "totpd_writer_batch_size_sum":
            snap["batch_sum"] = n
        elif name == "totpd_writer_batch_size_count":
            snap["batch_count"] = n
        elif name.startswith("totpd_requests_total{"):
            snap["requests"][name[name.index('"') + 1:name.rindex('"')]] = n
    print(json.dumps(snap))
    return 0


# ----- the results file -----

def append(path, rec):
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def cmd_meta(a):
    append(a.results, {"kind": "meta", "key": a.key, "value": a.value})
    return 0


def delta(before, after):
    """What totpd counted during one run: outcomes, and operations per commit."""
    out = {}
    vb, va = before.get("verifications", {}), after.get("verifications", {})
    for k, v in va.items():
        d = v - vb.get(k, 0)
        if d:
            out[k] = int(d)
    res = {"outcomes": out}
    commits = after.get("batch_count", 0) - before.get("batch_count", 0)
    ops = after.get("batch_sum", 0) - before.get("batch_sum", 0)
    if commits > 0:
        res["commits"] = int(commits)
        res["ops_per_commit"] = ops / commits
    return res


def cmd_record(a):
    rec = {"kind": "run", "workload": a.workload, "target": a.target, "c": a.c}
    wrk = None
    with open(a.log, errors="replace") as f:
        for line in f:
            if line.startswith("BENCH_JSON "):
                wrk = json.loads(line[len("BENCH_JSON "):])
    if wrk is None:
        rec["failed"] = True
    else:
        rec.update(wrk)
        secs = wrk["duration_us"] / 1e6
        rec["rps"] = wrk["requests"] / secs if secs > 0 else 0.0
    if a.threads:
        rec["threads"] = int(a.threads)
    if a.rss_kb:
        rec["rss_kb"] = int(a.rss_kb)
    if a.before and a.after:
        try:
            with open(a.before) as fb, open(a.after) as fa:
                rec["server"] = delta(json.load(fb), json.load(fa))
        except (OSError, ValueError):
            pass
    append(a.results, rec)
    return 0


# ----- the report -----

TITLES = [
    ("health", "Health: `GET /v1/sys/health`",
     "hello answers `GET /` with `{\"ok\":true}`. Expected: all 200."),
    ("agent_code", "Agent code read: `GET /api/v2/totp/code/<id>`",
     "Expected: all 200. Compared with the bare hyper hello at the same c."),
    ("engine_code", "TOTP engine code read: `GET /v1/totp/code/bench`",
     "Expected: all 200."),
    ("mfa_validate", "MFA wrong-code validation: `POST /v1/identity/mfa/method/totp/validate`",
     "Passcode `000000`, always wrong: every answer is 403 (expected), and in totpd each "
     "one is a durable write (failure count; group commit). The attempts are spread at "
     "random over several entities (`bench-0`, `bench-1`, …: 2 per second of run, at "
     "least 8) whose failure counts are cleared (`admin-unlock`) before each run, so no "
     "entity reaches the method's limit (100000) and no run measures a lock."),
    ("engine_validate", "TOTP engine wrong-code validation: `POST /v1/totp/code/bench`",
     "Random 6-digit codes. Expected: 200 `valid:false`, or 400 `code already used` for a "
     "code repeated within the window (counted as non-2xx, expected). totpd's engine keys "
     "lock after 5 consecutive failures for one period, and a locked key answers "
     "`valid:false` without checking or recording the code: the server outcomes column "
     "says how many attempts were real checks (`invalid`) and how many met the lock "
     "(`locked`). So for totpd this run measures, mostly, the refusal of a locked key "
     "under a flood of guesses, which writes nothing durable (the MFA table is the "
     "durable-write comparison); OpenBao's engine has no lock, checks every code and "
     "keeps tried codes in memory."),
    ("mix", "Mix: 90% agent code reads, 10% MFA wrong-code validations",
     "Reads expected 200, validations 403 (so about 10% non-2xx is expected)."),
    ("nitride_create", "Nitride token creates: `PUT /v1/auth/ratls/totp`",
     "Expected: all 200. Each is a durable write. The uuids made here are the ones the "
     "spend run below uses, at the same c."),
    ("nitride_spend", "Nitride spends: `PUT /v1/sys/policies/acl/bench-nitride` with `totp`",
     "Each request spends one token made by the create run above (204 expected): one "
     "transaction marks the token spent and writes the policy. The run ends when the "
     "tokens run out (so it can be shorter than the others); the at most c requests "
     "already on their way then carry a uuid that does not exist: up to c non-2xx are "
     "expected."),
    ("recovery_verify", "Recovery-code verifies: `POST /api/v1/auth/totp/verify/` (wrong code)",
     "A good temp_token and a wrong, well-formed recovery code: every answer is 401 "
     "(expected), and each is one argon2id verify (19 MiB, 2 passes; OWASP's parameters), "
     "at most two at once (the daemon's bound), whatever c is. The server outcomes "
     "column shows the user's failures (`invalid`, then `locked` once five have "
     "failed: the lock is looked at after the hash, so the work is the same)."),
    ("pi_validate", "privacyIDEA: `POST /validate/check` (wrong code)",
     "Expected: 200 with `result.value` false."),
]

# Ratio columns per workload: (header, baseline target, baseline workload or None for
# the SQLite number).
RATIOS = {
    "health": [("totpd/hello", "hello", "health"), ("totpd/OpenBao", "openbao", "health")],
    "agent_code": [("totpd/hello", "hello", "health")],
    "engine_code": [("totpd/hello", "hello", "health"),
                    ("totpd/OpenBao", "openbao", "engine_code")],
    "mfa_validate": [("totpd/SQLite 1-row commits", "sqlite", None),
                     ("totpd/privacyIDEA", "privacyidea", "pi_validate")],
    # No SQLite ratio here: a locked key's refusals write nothing (see the note).
    "engine_validate": [("totpd/OpenBao", "openbao", "engine_validate")],
    "mix": [("totpd/hello", "hello", "health")],
    "nitride_create": [("totpd/SQLite 1-row commits", "sqlite", None)],
    "nitride_spend": [("totpd/SQLite 1-row commits", "sqlite", None)],
    "recovery_verify": [],
    "pi_validate": [],
}

TARGET_ORDER = {"hello": 0, "totpd": 1, "totpd-recovery": 1.5, "openbao": 2, "privacyidea": 3}
TARGET_NAME = {"hello": "hello (bare hyper)", "totpd": "totpd", "openbao": "OpenBao",
               "privacyidea": "privacyIDEA"}
# The processes table: totpd's peak before and after the recovery-code runs.
PROC_NAME = dict(TARGET_NAME, **{
    "totpd": "totpd (reads, validations, Nitride)",
    "totpd-recovery": "totpd, after the recovery-code verifies (argon2id, 19 MiB a hash)",
})


def fmt_lat(us):
    if us is None:
        return "—"
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 1_000_000:
        return f"{us / 1000:.2f} ms"
    return f"{us / 1e6:.2f} s"


def fmt_rps(x):
    return f"{x:,.0f}"


def fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}×"


def fmt_kb(kb):
    if kb is None:
        return "—"
    return f"{kb / 1024:.1f} MiB"


def outcomes_text(rec):
    srv = rec.get("server")
    if not srv:
        return "—"
    parts = [f"{k.split('/', 1)[1]} {v:,}" for k, v in sorted(srv["outcomes"].items())]
    if "ops_per_commit" in srv:
        parts.append(f"{srv['commits']:,} commits, {srv['ops_per_commit']:.1f} ops/commit")
    return "; ".join(parts) if parts else "—"


def cmd_report(a):
    runs, meta = [], {}
    with open(a.results) as f:
        for line in f:
            rec = json.loads(line)
            if rec["kind"] == "run":
                runs.append(rec)
            elif rec["kind"] == "meta":
                meta[rec["key"]] = rec["value"]

    def find(target, workload, c):
        for r in runs:
            if r["target"] == target and r["workload"] == workload and r["c"] == c \
                    and not r.get("failed"):
                return r
        return None

    # The SQLite baseline ran at the start and at the end; ratios use the better one.
    sqlite = {}  # name -> {when: value}
    for k, v in meta.items():
        if k.startswith("sqlite@"):
            when, name = k[len("sqlite@"):].split(":", 1)
            sqlite.setdefault(name, {})[when] = float(v)
    one = sqlite.get("sqlite_one_row_per_commit", {})
    sqlite_one = max(one.values()) if one else None
    warnings = []  # a workload did not answer as expected: exit 1
    notes = []  # the machine was noisy: read with care
    out = []
    w = out.append
    w("# totpd benchmark results\n")
    w("Written by `bench/run` (see bench/README.md). One machine, load generator "
      "included: compare the ratios, measured in the same run, more than the raw numbers.\n")
    for key, label in [("command", "Command"), ("date", "Date"), ("commit", "Git commit"),
                       ("nproc", "nproc"), ("mem", "Memory"), ("cpu", "CPU"),
                       ("kernel", "Kernel"), ("fs", "Data directory's file system"),
                       ("wrk", "Load"), ("totpd_args", "totpd"),
                       ("versions", "Versions")]:
        if meta.get(key):
            w(f"- {label}: {meta[key]}")
    w("")

    w("## SQLite commit baseline\n")
    w("rusqlite (bundled SQLite), WAL, `synchronous = FULL` as totpd sets, on the same "
      "file system as totpd's data directory.\n")
    whens = [x for x in ("start", "end") if any(x in d for d in sqlite.values())]
    w("| transaction | " + " | ".join(f"rows/s ({x})" for x in whens)
      + " | " + " | ".join(f"commits/s ({x})" for x in whens) + " |")
    w("|" + " --- |" + " ---: |" * (2 * len(whens)))
    for name in sorted(sqlite, key=lambda n: (n != "sqlite_one_row_per_commit", n)):
        if name.endswith("_commits"):
            continue
        rows = sqlite[name]
        if name == "sqlite_one_row_per_commit":
            label, commits = "one row per commit", rows
        else:
            label = name[len("sqlite_"):].split("_", 1)[0] + " rows per commit"
            commits = sqlite.get(name + "_commits", {})
        cells = [f"{rows[x]:,.0f}" if x in rows else "—" for x in whens]
        cells += [f"{commits[x]:,.0f}" if x in commits else "—" for x in whens]
        w(f"| {label} (`{name}`) | " + " | ".join(cells) + " |")
    w("")
    if sqlite_one is None:
        warnings.append("the SQLite baseline did not run")
    else:
        w(f"Ratios below use {sqlite_one:,.0f} commits/s, the better of the two.\n")
        if len(one) == 2 and min(one.values()) > 0 and \
                max(one.values()) / min(one.values()) > 2:
            notes.append("the SQLite one-row commit rate moved more than 2× between the start "
                         f"and the end ({one.get('start', 0):,.0f} and {one.get('end', 0):,.0f}/s):"
                         " the disk is shared and was busy; rerun for steadier numbers")

    for workload, title, note in TITLES:
        recs = [r for r in runs if r["workload"] == workload]
        if not recs:
            continue
        # A ratio column only where its baseline ran.
        ratios = [x for x in RATIOS.get(workload, [])
                  if (x[1] == "sqlite" and sqlite_one)
                  or any(r["target"] == x[1] and r["workload"] == x[2] for r in runs)]
        if workload != "health" and any(t == "hello" for _, t, _ in ratios):
            # The ceiling's own rows, for reference (measured once, with GET /).
            recs += [r for r in runs if r["target"] == "hello" and r["workload"] == "health"]
        w(f"## {title}\n")
        w(note + "\n")
        head = ["target", "c", "req/s", "p50", "p99", "non-2xx", "socket errors"]
        head += [h for h, _, _ in ratios]
        if any(r.get("server") for r in recs):
            head.append("server outcomes (totpd metrics)")
        w("| " + " | ".join(head) + " |")
        w("|" + "|".join([" --- "] + [" ---: "] * (len(head) - 1)) + "|")
        recs.sort(key=lambda r: (r["c"], TARGET_ORDER.get(r["target"], 9)))
        for r in recs:
            name = TARGET_NAME.get(r["target"], r["target"])
            if r.get("failed"):
                w(f"| {name} | {r['c']} | failed (see the wrk log) |" + " |" * (len(head) - 3))
                if r["workload"] == workload:
                    warnings.append(f"{workload} {r['target']} c={r['c']}: wrk gave no result")
                continue
            sock = r["connect_err"] + r["read_err"] + r["write_err"] + r["timeout_err"]
            row = [name, str(r["c"]), fmt_rps(r["rps"]), fmt_lat(r["p50_us"]),
                   fmt_lat(r["p99_us"]), f"{r['non2xx']:,}", f"{sock:,}"]
            for _, base_target, base_workload in ratios:
                val = None
                if r["target"] == "totpd":
                    if base_target == "sqlite":
                        if sqlite_one:
                            val = r["rps"] / sqlite_one
                    else:
                        b = find(base_target, base_workload, r["c"])
                        if b and b["rps"] > 0:
                            val = r["rps"] / b["rps"]
                row.append(fmt_ratio(val))
            if "server outcomes (totpd metrics)" in head:
                row.append(outcomes_text(r))
            w("| " + " | ".join(row) + " |")
            if r["workload"] != workload:
                continue  # a reference row, checked in its own table
            # Sanity: reads must succeed; nothing may fail at the socket.
            if workload in ("health", "agent_code", "engine_code") and r["non2xx"] > 0:
                warnings.append(f"{workload} {r['target']} c={r['c']}: {r['non2xx']} non-2xx")
            if r["requests"] == 0:
                warnings.append(f"{workload} {r['target']} c={r['c']}: no request completed")
            if sock > 0:
                warnings.append(f"{workload} {r['target']} c={r['c']}: {sock} socket errors")
            if workload == "nitride_create" and r["non2xx"] > 0:
                warnings.append(f"nitride_create c={r['c']}: {r['non2xx']} non-2xx")
            if workload == "nitride_spend" and r["non2xx"] > r["c"]:
                warnings.append(f"nitride_spend c={r['c']}: {r['non2xx']} non-2xx "
                                f"(at most {r['c']} expected)")
            if workload == "mix" and r["requests"] and r["non2xx"] > 0.2 * r["requests"]:
                warnings.append(f"mix {r['target']} c={r['c']}: {r['non2xx']} non-2xx "
                                f"of {r['requests']} (about 10% expected)")
            if workload == "mfa_validate" and r["target"] == "totpd" and r["c"] == 1 \
                    and sqlite_one and r["rps"] > 1.5 * sqlite_one:
                notes.append(f"MFA validations at c=1 ({r['rps']:,.0f}/s, one commit each) beat "
                             f"the SQLite one-row baseline ({sqlite_one:,.0f}/s): the disk was "
                             "faster then than during the baseline; the SQLite ratios are "
                             "inflated")
            if workload == "mfa_validate" and r["target"] == "totpd":
                oc = r.get("server", {}).get("outcomes", {})
                if oc.get("vault_mfa/locked"):
                    warnings.append(f"mfa_validate c={r['c']}: "
                                    f"{oc['vault_mfa/locked']} attempts met a lock")
        w("")

    for key, title in [("skipped", "Skipped")]:
        if meta.get(key):
            w(f"## {title}\n")
            for line in meta[key].split("\n"):
                w(f"- {line}")
            w("")

    procs = sorted({k.split(":", 1)[1] for k in meta if k.startswith("rss:")}
                   | {k.split(":", 1)[1] for k in meta if k.startswith("threads:")},
                   key=lambda p: TARGET_ORDER.get(p, 9))
    if procs:
        w("## Processes\n")
        w("Peak RSS is the process's VmHWM (/proc/<pid>/status) when its runs ended; "
          "threads is the most `Threads:` seen, sampled every 0.2 s, during its c="
          f"{meta.get('cmax', '64')} runs. Both are summed over the process and its "
          "children (gunicorn's workers; shared pages then count once per process).\n")
        w("| process | peak RSS | threads at c=" + str(meta.get("cmax", "64")) + " |")
        w("| --- | ---: | ---: |")
        for p in procs:
            rss = meta.get(f"rss:{p}")
            w(f"| {PROC_NAME.get(p, p)} | {fmt_kb(int(rss)) if rss else '—'} | "
              f"{meta.get(f'threads:{p}', '—')} |")
        w("")

    w("## Sanity checks\n")
    for x in warnings:
        w(f"- WARNING: {x}")
    for x in notes:
        w(f"- NOTE: {x}")
    if not warnings:
        w("- All reads answered 2xx, no socket errors, no MFA attempt met a lock.")
    w("")

    text = "\n".join(out)
    with open(a.out, "w") as f:
        f.write(text)
    print(text)
    return 1 if warnings else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("port")
    s.set_defaults(fn=cmd_port)
    s = sub.add_parser("req")
    s.add_argument("method")
    s.add_argument("url")
    s.add_argument("--token")
    s.add_argument("--data")
    s.add_argument("--form", action="store_true")
    s.add_argument("--expect")
    s.add_argument("--field")
    s.add_argument("--status", action="store_true", help="print the status only")
    s.set_defaults(fn=cmd_req)
    s = sub.add_parser("totp")
    s.add_argument("secret")
    s.set_defaults(fn=cmd_totp)
    s = sub.add_parser("wait")
    s.add_argument("url")
    s.add_argument("--timeout", type=float, default=30)
    s.set_defaults(fn=cmd_wait)
    s = sub.add_parser("metrics")
    s.add_argument("url")
    s.add_argument("token")
    s.set_defaults(fn=cmd_metrics)
    s = sub.add_parser("meta")
    s.add_argument("results")
    s.add_argument("key")
    s.add_argument("value")
    s.set_defaults(fn=cmd_meta)
    s = sub.add_parser("record")
    s.add_argument("results")
    s.add_argument("--workload", required=True)
    s.add_argument("--target", required=True)
    s.add_argument("--c", type=int, required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--threads")
    s.add_argument("--rss-kb")
    s.add_argument("--before")
    s.add_argument("--after")
    s.set_defaults(fn=cmd_record)
    s = sub.add_parser("report")
    s.add_argument("results")
    s.add_argument("out")
    s.set_defaults(fn=cmd_report)
    a = p.parse_args()
    sys.exit(a.fn(a))


if __name__ == "__main__":
    main()
