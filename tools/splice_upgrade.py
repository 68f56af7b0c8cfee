# Splices the SQL files of capabilities new in 0.2.0 (and the Rust functions they need, from the
# generated install script) into the 0.1.0 -> 0.2.0 upgrade script, which is unreleased and so
# still edited, each between fixed markers; re-runnable.
# Usage: cargo pgrx schema pg15 --out /tmp/schema.sql
#        python3 tools/splice_upgrade.py /tmp/schema.sql
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = [
    ("anomaly", "sql/anomaly.sql",
     ["anomaly_scores_on_insert", "event_value_key", "if_assess", "if_explain", "if_score",
      "if_train", "invalidate_model_cache", "train_event_model"]),
    ("ai", "sql/ai.sql", ["check_ai_task", "check_redaction_pattern", "complete_json", "embed_texts", "redact",
                            "run_ai_task"]),
    ("search", "sql/search.sql", []),
    ("insights", "sql/insights.sql", []),
    ("webhooks", "sql/webhooks.sql", ["check_webhook_url", "shown_url", "wake_worker_at_commit"]),
    ("jobs", "sql/jobs.sql", ["breaker_states", "worker_progress", "worker_states"]),
]
ANCHOR = "-- Triggers and event triggers 0.2.0 adds or changes."

generated = open(sys.argv[1]).read()
path = os.path.join(ROOT, "sql/custos--0.1.0--0.2.0.sql")
script = open(path).read()
for name, sql_file, functions in SECTIONS:
    blocks = []
    for fn in functions:
        m = re.search(r"CREATE  FUNCTION \"%s\"\(.*?AS 'MODULE_PATHNAME', '%s_wrapper';" % (fn, fn), generated, re.S)
        if not m:
            sys.exit(f"{fn} is not in {sys.argv[1]}")
        blocks.append(m.group(0))
    start, end = f"-- BEGIN {name}", f"-- END {name}\n\n"
    section = (f"-- BEGIN {name} (new in 0.2.0): its Rust functions, then {sql_file} as it is.\n"
               + "\n\n".join(blocks) + "\n\n"
               + open(os.path.join(ROOT, sql_file)).read().rstrip() + f"\n-- END {name}\n\n")
    if start in script:
        i = script.index(start)
        j = script.index(end) + len(end)
        script = script[:i] + section + script[j:]
    else:
        i = script.index(ANCHOR)
        script = script[:i] + section + script[i:]
    print(f"{name}: {len(section)} bytes")
open(path, "w").write(script)
