# Splices sql/anomaly.sql (and the Rust functions it needs, from the generated install script)
# into the 0.1.0 -> 0.2.0 upgrade script (unreleased, so still edited), between fixed markers;
# re-runnable. Usage: cargo pgrx schema pg15 --out /tmp/schema.sql
#                     python3 tools/splice_anomaly_upgrade.py /tmp/schema.sql
import os, re, sys
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
gen = open(sys.argv[1]).read()
up_path = os.path.join(ROOT, 'sql/custos--0.1.0--0.2.0.sql')
up = open(up_path).read()
fns = ['anomaly_scores_on_insert', 'event_value_key', 'if_assess', 'if_explain', 'if_score', 'if_train', 'invalidate_model_cache', 'train_event_model']
blocks = []
for fn in fns:
    m = re.search(r'CREATE  FUNCTION "%s"\(.*?AS \'MODULE_PATHNAME\', \'%s_wrapper\';' % (fn, fn), gen, re.S)
    assert m, fn
    blocks.append(m.group(0))
section = ("-- BEGIN anomaly (new in 0.2.0): its Rust functions, then sql/anomaly.sql as it is.\n"
           + "\n\n".join(blocks) + "\n\n" + open(os.path.join(ROOT, 'sql/anomaly.sql')).read().rstrip() + "\n-- END anomaly\n\n")
start, end = "-- BEGIN anomaly", "-- END anomaly\n\n"
if start in up:
    i = up.index(start); j = up.index(end) + len(end)
    up = up[:i] + section + up[j:]
else:
    anchor = "-- Triggers and event triggers 0.2.0 adds or changes."
    i = up.index(anchor)
    up = up[:i] + section + up[i:]
open(up_path, 'w').write(up)
print("spliced", len(section))
