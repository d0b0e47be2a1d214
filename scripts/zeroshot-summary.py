#!/usr/bin/env python3
"""Markdown table of scripts/zeroshot-table.sh's finished tasks: python3 scripts/zeroshot-summary.py results/smollm2 [fp]

One row per task: docs, acc ± stderr, acc_norm ± stderr (LAMBADA: perplexity), wall time, and the lm-evaluation-harness
full-run values of the fixture (Tests/Fixtures/zeroshot/summary.json) where it has them."""
import json, os, sys

folder = sys.argv[1] if len(sys.argv) > 1 else "results/smollm2"
name = sys.argv[2] if len(sys.argv) > 2 else "fp"
fixture = json.load(open(os.path.join(os.path.dirname(__file__), "..", "Tests/Fixtures/zeroshot/summary.json"))).get("full", {})

def metric(m):
    return "—" if m is None else f"{m['value']:.4f} ± {m['stderr']:.4f}" if m.get("stderr") is not None else f"{m['value']:.4f}"

def resumed(t):
    # A resumed run's time covers only the docs it scored itself.
    return f" (last {t['docs'] - t['resumed_docs']} docs)" if t.get("resumed_docs") else ""

print("| task | docs | acc | acc_norm / perplexity | time | lm-eval full run (fixture): acc | acc_norm |")
print("|---|---:|---:|---:|---:|---:|---:|")
for f in sorted(os.listdir(folder)):
    prefix = f"zeroshot-{name}-"
    if not (f.startswith(prefix) and f.endswith(".json")):
        continue
    run = json.load(open(os.path.join(folder, f)))
    for t in run["tasks"]:
        ref = fixture.get(t["task"], {}).get("metrics", {})
        ref_acc = f"{ref['acc']:.4f} ± {ref['acc_stderr']:.4f}" if "acc" in ref else "—"
        ref_norm = f"{ref['acc_norm']:.4f} ± {ref['acc_norm_stderr']:.4f}" if "acc_norm" in ref else "—"
        second = metric(t.get("acc_norm")) if t.get("acc_norm") else metric(t.get("perplexity"))
        print(f"| {t['task']} | {t['docs']} | {metric(t['acc'])} | {second} | {t['seconds'] / 60:.1f} min{resumed(t)} | {ref_acc} | {ref_norm} |")
