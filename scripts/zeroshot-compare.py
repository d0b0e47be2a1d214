#!/usr/bin/env python3
"""The zero-shot table papers print, one row per model: python3 scripts/zeroshot-compare.py FOLDER NAME...

Reads FOLDER/zeroshot-NAME-<task>.json (scripts/zeroshot-table.sh). Per task the papers' metric: acc_norm where the
task has it, else acc (QuaRot's and the CoQuant reference's rule; LAMBADA: acc), in %, ± its standard error. The
average is over the tasks every row has finished; its standard error is √(Σ se²)/n (tasks independent). Time: the
row's wall time over those tasks (a resumed task counts its last invocation only, marked *)."""
import json, math, os, sys

TASKS = ["arc_easy", "arc_challenge", "boolq", "hellaswag", "lambada_openai", "openbookqa", "piqa", "social_iqa", "winogrande"]
SHORT = {"arc_easy": "ARC-e", "arc_challenge": "ARC-c", "boolq": "BoolQ", "hellaswag": "HellaSwag", "lambada_openai": "LAMBADA",
         "openbookqa": "OBQA", "piqa": "PIQA", "social_iqa": "SIQA", "winogrande": "WinoG"}

folder, names = sys.argv[1], sys.argv[2:]
if not names:
    sys.exit(__doc__)

def load(name, task):
    path = os.path.join(folder, f"zeroshot-{name}-{task}.json")
    return json.load(open(path))["tasks"][0] if os.path.isfile(path) else None

runs = {n: {t: load(n, t) for t in TASKS} for n in names}
common = [t for t in TASKS if all(runs[n][t] for n in names)]
docs = {t: {runs[n][t]["docs"] for n in names} for t in common}
for t, d in docs.items():
    if len(d) > 1:
        sys.exit(f"{t}: the rows scored different numbers of docs {sorted(d)}; compare runs of the same --limit")

print("| model | " + " | ".join(f"{SHORT[t]} ({next(iter(docs[t]))})" for t in common) + " | avg | time |")
print("|---|" + "---:|" * (len(common) + 2))
for n in names:
    cells, values, var, seconds, resumed = [], [], 0.0, 0.0, False
    for t in common:
        r = runs[n][t]
        m = r.get("acc_norm") or r["acc"]
        values.append(m["value"])
        var += (m.get("stderr") or 0) ** 2
        cells.append(f"{100 * m['value']:.1f} ± {100 * (m.get('stderr') or 0):.1f}")
        seconds += r["seconds"]
        resumed |= bool(r.get("resumed_docs"))
    avg = sum(values) / len(values) if values else float("nan")
    se = math.sqrt(var) / len(values) if values else float("nan")
    print(f"| {n} | " + " | ".join(cells) + f" | **{100 * avg:.2f}** ± {100 * se:.2f} | {seconds / 60:.0f} min{'*' if resumed else ''} |")
missing = {n: [t for t in TASKS if not runs[n][t]] for n in names}
for n, m in missing.items():
    if m:
        print(f"\n{n}: not finished: {', '.join(m)}", file=sys.stderr)
