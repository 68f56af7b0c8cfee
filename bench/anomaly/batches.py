"""The audit stream as SQL for psql, and a fingerprint to check what custos recorded.

    python batches.py sql TENANT FILE.jsonl [SIZE]   one transaction per SIZE (2,000) events:
        BEGIN; SELECT custos.set_tenant(TENANT); SELECT custos.record_events($ev$[...]$ev$::jsonb); COMMIT;
    python batches.py fingerprint FILE.jsonl         md5 of the lines `action|entity_id` in file order:
        the same as custos.events' `md5(string_agg(action || '|' || coalesce(entity_id, ''), E'\\n'
        ORDER BY seq))` when seq i holds line i.
"""

import hashlib
import json
import sys


def sql(tenant, path, size):
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    for i in range(0, len(lines), size):
        batch = "[" + ",".join(lines[i:i + size]) + "]"
        if "$ev$" in batch:
            sys.exit(f"{path}: an event holds $ev$")
        sys.stdout.write(f"BEGIN;\nSELECT custos.set_tenant('{tenant}');\n"
                         f"SELECT custos.record_events($ev${batch}$ev$::jsonb);\nCOMMIT;\n")


def fingerprint(path):
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                e = json.loads(line)
                rows.append(f"{e['action']}|{e.get('entity_id') or ''}")
    print(hashlib.md5("\n".join(rows).encode()).hexdigest())


def main():
    args = sys.argv[1:]
    if len(args) in (3, 4) and args[0] == "sql":
        sql(args[1], args[2], int(args[3]) if len(args) == 4 else 2000)
    elif len(args) == 2 and args[0] == "fingerprint":
        fingerprint(args[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
