"""A labelled synthetic audit stream for custos's anomaly scoring (standard library only).

    python audit_stream.py [--out DIR] [--seed N] [--tenants N] [--end YYYY-MM-DD] [--days N]

Ten tenants (00000000-0000-4000-8000-0000000000a0 .. a9), each a month (30 days before --end,
UTC) of ordinary work: ~40 people in departments, sessions Monday to Friday between about 08:00 and
18:00 (some evenings, a rare weekend hour, a few days off), each with their own mix of actions on
their own few entities from one or two IPs, a few failed logins and failed actions, and one service
account that syncs every hour day and night. About 8,000-15,000 events per tenant.

Injected into every tenant, labelled by kind (one incident each, two of the last):
  offhours_privileged_burst  an admin at ~03:00 on a Sunday: a login and 20 privileged actions
                             (grant_role, delete_user, ...; severity high) within a few minutes
  dormant_reactivated        a person last active on the window's first day, silent for 27 days,
                             then a login and ~25 actions in an hour on entities mostly not theirs
  mass_export                a person who rarely or never exports: 30 exports of 30 entities in
                             about ten minutes, in working hours
  new_ip_rare_action         a known person from a never-seen IP: a login and 1-2 actions they have
                             never done

Writes, per tenant, DIR/<tenant>.jsonl (one event a line, sorted by occurred_at, with exactly the
keys custos.record_events accepts: occurred_at, actor, action, entity_type, entity_id, severity,
details, ip_address, user_agent) and DIR/<tenant>.labels (one line per event in the same order:
`normal` or the kind). Line i of a fresh tenant's file becomes its event seq i when the lines are
recorded in order. Deterministic for a given seed.
"""

import argparse
import datetime as dt
import json
import os
import random
import sys

KINDS = ("offhours_privileged_burst", "dormant_reactivated", "mass_export", "new_ip_rare_action")
UTC = dt.timezone.utc

# department: (weight, entity types, usual actions besides login/view/search)
DEPARTMENTS = {
    "engineering": (8, ["repository", "deployment", "ticket"], ["update", "comment", "deploy", "create"]),
    "sales": (8, ["customer", "opportunity", "quote"], ["update", "create", "comment"]),
    "finance": (5, ["invoice", "payment", "ledger_account"], ["update", "approve", "create"]),
    "hr": (3, ["employee", "payroll", "review"], ["update", "create"]),
    "support": (7, ["ticket", "customer", "article"], ["update", "comment", "create"]),
    "it": (3, ["user", "role", "device"], ["update", "create_user", "grant_role", "revoke_role", "reset_password"]),
}
PRIVILEGED = ["grant_role", "delete_user", "revoke_role", "disable_mfa", "change_policy", "create_user",
              "reset_password"]
SEVERITY = {
    "login": "info", "logout": "info", "view": "info", "search": "info", "comment": "info", "sync": "info",
    "update": "low", "create": "low", "approve": "low", "login_failed": "low",
    "export": "medium", "deploy": "medium", "create_user": "medium", "revoke_role": "medium",
    "reset_password": "medium",
    "grant_role": "high", "delete_user": "high", "disable_mfa": "high", "change_policy": "high",
    "delete_record": "high", "bulk_download": "high",
}
FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "ken", "laura",
         "mallory", "nina", "oscar", "peggy", "quinn", "rupert", "sybil", "trent", "ursula", "victor", "wendy",
         "xavier", "yasmin", "zoe"]
LAST = ["adams", "baker", "clark", "davis", "evans", "fischer", "garcia", "hughes", "ito", "jones", "khan",
        "lopez", "moreau", "novak", "okafor", "patel", "quist", "rossi", "schmidt", "tanaka", "usman", "vogel",
        "weber", "xu", "young", "zimmer"]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
]
POOL = 400  # entities per type and tenant


class Actor:
    pass


def make_actors(rng, t, n):
    names, actors = set(), []
    depts = list(DEPARTMENTS)
    weights = [DEPARTMENTS[d][0] for d in depts]
    for k in range(n):
        a = Actor()
        while True:
            name = f"{rng.choice(FIRST)}.{rng.choice(LAST)}"
            if name not in names:
                break
        names.add(name)
        a.name = name + "@tenant" + str(t) + ".example"
        # Three admins in IT in every tenant, the rest by weight.
        a.dept = "it" if k < 3 else rng.choices(depts, weights)[0]
        a.admin = a.dept == "it"
        _, types, extra = DEPARTMENTS[a.dept]
        a.types = types
        acts = ["view", "search"] + rng.sample(extra, k=min(len(extra), rng.randint(1, len(extra))))
        if not a.admin and rng.random() < 0.3:
            acts.append("export")
        w = [rng.gammavariate(1.5, 1.0) for _ in acts]
        w[0] += 2.0  # viewing dominates
        if "export" in acts:
            w[acts.index("export")] = 0.03 * sum(w)
        a.actions, a.weights = acts, w
        a.entities = [(ty, f"{ty}-{rng.randrange(POOL):04d}") for ty in types for _ in range(rng.randint(3, 7))]
        a.ips = [f"10.{t}.{rng.randrange(1, 60)}.{rng.randrange(2, 250)}"]
        if rng.random() < 0.5:
            a.ips.append(f"172.16.{t}.{rng.randrange(2, 250)}")  # VPN
        a.agent = rng.choice(AGENTS)
        a.rate = max(4.0, rng.lognormvariate(2.45, 0.35))  # actions per working day, ~12
        a.start = rng.gauss(8.6, 0.6)
        a.end = rng.gauss(17.4, 0.6)
        a.off = set()
        actors.append(a)
    return actors


def event(at, actor, action, entity_type, entity_id, ip, agent, details=None, severity=None):
    return {
        "occurred_at": at.isoformat(),
        "actor": actor,
        "action": action,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "severity": severity or SEVERITY[action],
        "details": details if details is not None else {"outcome": "success"},
        "ip_address": ip,
        "user_agent": agent,
    }


def at_hour(day, hours):
    return day + dt.timedelta(seconds=int(hours * 3600))


def ordinary_action(rng, a, at, ip, out):
    action = rng.choices(a.actions, a.weights)[0]
    if action == "search":
        ty = rng.choice(a.types)
        out.append(event(at, a.name, "search", ty, None, ip, a.agent,
                         {"outcome": "success", "results": rng.randrange(0, 60)}))
        return
    if rng.random() < 0.85:
        ty, eid = rng.choice(a.entities)
    else:
        ty = rng.choice(a.types)
        eid = f"{ty}-{rng.randrange(POOL):04d}"
    if action in ("create_user", "revoke_role", "reset_password"):
        ty, eid = "user", f"user-{rng.randrange(POOL):04d}"
    elif action == "grant_role":
        ty, eid = "role", rng.choice(["viewer", "editor", "analyst", "support_agent", "billing_admin", "admin"])
    details = {"outcome": "failure"} if rng.random() < 0.01 else None
    if action == "export":
        details = {"outcome": "success", "format": "csv"}
    out.append(event(at, a.name, action, ty, eid, ip, a.agent, details))


def session(rng, a, day, start, end, n, out):
    """A login at start, then n actions spread over [start, end) hours."""
    ip = rng.choice(a.ips)
    t0 = at_hour(day, start)
    if rng.random() < 0.03:
        out.append(event(t0 - dt.timedelta(seconds=rng.randrange(5, 60)), a.name, "login_failed", "user", a.name,
                         ip, a.agent, {"outcome": "failure", "reason": "bad_password"}))
    out.append(event(t0, a.name, "login", "user", a.name, ip, a.agent))
    for h in sorted(rng.uniform(start, end) for _ in range(n)):
        ordinary_action(rng, a, at_hour(day, h), ip, out)


def ordinary(rng, actors, days, dormant):
    out = []
    for a in actors:
        weekdays = [d for d in days if d.weekday() < 5]
        a.off = set(rng.sample(weekdays, k=rng.randint(0, 4))) - ({days[0]} if a is dormant else set())
        for i, d in enumerate(days):
            if a is dormant and i > 1:
                break
            if d.weekday() >= 5:
                if rng.random() < 0.04:
                    s = rng.uniform(10, 16)
                    session(rng, a, d, s, s + rng.uniform(0.3, 1.5), rng.randint(2, 6), out)
                continue
            if d in a.off:
                continue
            n = max(1, round(rng.gauss(a.rate, a.rate * 0.3)))
            start = a.start + rng.gauss(0, 0.4)
            end = a.end + rng.gauss(0, 0.4)
            if rng.random() < 0.05:
                end = rng.uniform(19.5, 22.5)  # an evening
            session(rng, a, d, start, end, n, out)
    return out


def service_account(t, days):
    name, ip, agent = "svc-directory-sync", f"10.{t}.0.10", "custos-sync/2.3"
    out = []
    for d in days:
        for h in range(24):
            at = d + dt.timedelta(hours=h, minutes=7)
            out.append(event(at, name, "sync", "integration", "directory", ip, agent,
                             {"outcome": "success", "changed": (h * 7 + d.day) % 5}))
    return out


def inject(rng, t, actors, days, dormant):
    """The labelled incidents: a list of (event, kind)."""
    out = []
    admins = [a for a in actors if a.admin]
    people = [a for a in actors if not a.admin and a is not dormant]

    # An admin at ~03:00 on a Sunday: a login and 20 privileged actions in a few minutes.
    a = rng.choice(admins)
    sunday = rng.choice([d for d in days if d.weekday() == 6])
    at = sunday + dt.timedelta(hours=3, minutes=rng.randrange(0, 40), seconds=rng.randrange(60))
    ip = rng.choice(a.ips)
    out.append((event(at, a.name, "login", "user", a.name, ip, a.agent), KINDS[0]))
    for _ in range(20):
        at += dt.timedelta(seconds=rng.randrange(4, 20))
        action = rng.choice(PRIVILEGED)
        ty, eid = ("policy", "policy-" + rng.choice(["mfa", "password", "sso", "retention"])) \
            if action == "change_policy" else ("user", f"user-{rng.randrange(POOL):04d}")
        if action == "grant_role":
            ty, eid = "role", rng.choice(["admin", "owner", "billing_admin", "security_admin"])
        out.append((event(at, a.name, action, ty, eid, ip, a.agent, severity="high"), KINDS[0]))

    # The dormant person, last seen on day 1 (the window's first Friday), back on the last Friday.
    a = dormant
    day = [d for d in days if d.weekday() == 4][-1]
    at = at_hour(day, rng.uniform(9.5, 15.5))
    ip = rng.choice(a.ips)
    out.append((event(at, a.name, "login", "user", a.name, ip, a.agent), KINDS[1]))
    for _ in range(rng.randint(22, 28)):
        at += dt.timedelta(seconds=rng.randrange(30, 240))
        action = rng.choices(["view", "search", "export", "update"], [5, 2, 2, 1])[0]
        ty = rng.choice(a.types)
        eid = None if action == "search" else f"{ty}-{rng.randrange(POOL):04d}"
        details = {"outcome": "success", "format": "csv"} if action == "export" else None
        out.append((event(at, a.name, action, ty, eid, ip, a.agent, details), KINDS[1]))

    # Mass export by someone who rarely or never exports: 30 entities in about ten minutes.
    a = exporter = rng.choice([p for p in people if "export" not in p.actions] or people)
    day = rng.choice([d for d in days[3:-3] if d.weekday() < 5 and d not in a.off])
    at = at_hour(day, rng.uniform(10, 16))
    ip = rng.choice(a.ips)
    for eid in rng.sample(range(POOL), 30):
        at += dt.timedelta(seconds=rng.randrange(5, 35))
        ty = rng.choice(a.types)
        out.append((event(at, a.name, "export", ty, f"{ty}-{eid:04d}", ip, a.agent,
                          {"outcome": "success", "format": "csv"}), KINDS[2]))

    # Twice: a known person from a never-seen IP, doing what they never do.
    for a in rng.sample([p for p in people if p is not exporter], 2):
        day = rng.choice([d for d in days[3:-1] if d.weekday() < 5 and d not in a.off])
        at = at_hour(day, rng.uniform(9, 17))
        ip = f"{rng.choice(['203.0.113', '198.51.100', '192.0.2'])}.{rng.randrange(2, 250)}"
        out.append((event(at, a.name, "login", "user", a.name, ip, a.agent), KINDS[3]))
        never = [x for x in ["export", "delete_record", "bulk_download", "change_policy", "grant_role",
                             "disable_mfa"] if x not in a.actions]
        for action in rng.sample(never, rng.randint(1, 2)):
            at += dt.timedelta(seconds=rng.randrange(20, 300))
            ty = rng.choice(a.types)
            eid = f"{ty}-{rng.randrange(POOL):04d}"
            if action in ("change_policy", "grant_role", "disable_mfa"):
                ty, eid = ("role", "admin") if action == "grant_role" else ("policy", "policy-mfa")
            details = {"outcome": "success", "format": "csv"} if action in ("export", "bulk_download") else None
            out.append((event(at, a.name, action, ty, eid, ip, a.agent, details), KINDS[3]))
    return out


def tenant_stream(seed, t, days):
    rng = random.Random(seed * 1000 + t)
    actors = make_actors(rng, t, rng.randint(36, 44))
    dormant = rng.choice([a for a in actors if not a.admin])
    labelled = [(e, "normal") for e in ordinary(rng, actors, days, dormant)]
    labelled += [(e, "normal") for e in service_account(t, days)]
    labelled += inject(rng, t, actors, days, dormant)
    # Stable sort by time: events generated in order keep it on equal timestamps.
    labelled.sort(key=lambda el: el[0]["occurred_at"])
    return labelled


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/opt/custos/anomaly/audit")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tenants", type=int, default=10)
    p.add_argument("--end", default="2026-11-01")
    p.add_argument("--days", type=int, default=30)
    args = p.parse_args()
    end = dt.datetime.fromisoformat(args.end).replace(tzinfo=UTC)
    days = [end - dt.timedelta(days=args.days - i) for i in range(args.days)]
    os.makedirs(args.out, exist_ok=True)
    total = {k: 0 for k in ("events", "normal") + KINDS}
    for t in range(args.tenants):
        tenant = f"00000000-0000-4000-8000-0000000000a{t:x}" if t < 16 else f"00000000-0000-4000-8000-{t:012x}"
        labelled = tenant_stream(args.seed, t, days)
        assert all(days[0] <= dt.datetime.fromisoformat(e["occurred_at"]) < end for e, _ in labelled)
        base = os.path.join(args.out, tenant)
        with open(base + ".jsonl.tmp", "w") as fe, open(base + ".labels.tmp", "w") as fl:
            for e, kind in labelled:
                fe.write(json.dumps(e, separators=(",", ":")) + "\n")
                fl.write(kind + "\n")
        os.replace(base + ".jsonl.tmp", base + ".jsonl")
        os.replace(base + ".labels.tmp", base + ".labels")
        counts = {k: sum(1 for _, kind in labelled if kind == k) for k in ("normal",) + KINDS}
        total["events"] += len(labelled)
        for k, v in counts.items():
            total[k] += v
        if not 8000 <= len(labelled) <= 15000:
            sys.exit(f"tenant {tenant}: {len(labelled)} events, outside 8,000-15,000")
    print(f"  audit stream: {args.tenants} tenants, {total['events']} events, {args.days} days to {args.end}; "
          + ", ".join(f"{k} {total[k]}" for k in KINDS) + f" -> {args.out}")


if __name__ == "__main__":
    main()
