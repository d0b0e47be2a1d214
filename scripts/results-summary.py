#!/usr/bin/env python3
"""Markdown table of the finished runs of scripts/results-table.sh: python3 scripts/results-summary.py results/smollm2

One row per run (perplexity ± standard error, windows, summed layer loss, quantize and evaluation wall time), then
GPTQ vs CDQuant for every pair of runs whose names differ only in the solver: summed layer loss and the share of
linears where CDQuant's loss is lower. Seeded runs (…-s0, -s1, -s2) are also summarised as mean ± spread, and
ResQ/CoQuant runs get their stage timings (statistics, eigendecompositions, solves, the calibration passes, evaluation).
Runs that differ in one setting (ResQ → CoQuant, GPTQ → CDQuant, per-layer → shared) are compared window by window."""
import json, math, os, re, statistics, sys

folder = sys.argv[1] if len(sys.argv) > 1 else "results/smollm2"
runs = {}
for f in sorted(os.listdir(folder)):
    if f.endswith(".json"):
        r = json.load(open(os.path.join(folder, f)))
        if "ppl" in r:    # the folder also holds zero-shot and KL results (scripts/zeroshot-summary.py)
            runs[f[:-5]] = r

print("| run | WikiText-2 PPL | windows | Σ layer loss | quantize s | eval s |")
print("|---|---:|---:|---:|---:|---:|")
for name, r in runs.items():
    p = r["ppl"]
    loss = sum(l["loss"] for l in r.get("linears", []))
    # A resumed step's time covers its last invocation only: marked *, not comparable with the others.
    q = f"{r.get('quantize_seconds', 0):.0f}{'*' if 'quantize_note' in r else ''}"
    e = f"{r['eval_seconds']}{'*' if 'eval_note' in r else ''}"
    print(f"| {name} | {p['perplexity']:.4f} ± {p['perplexity_stderr']:.4f} | {p['windows']} | "
          f"{loss:.4g} | {q} | {e} |" if r.get("linears") else
          f"| {name} | {p['perplexity']:.4f} ± {p['perplexity_stderr']:.4f} | {p['windows']} | — | — | {e} |")
if any("quantize_note" in r or "eval_note" in r for r in runs.values()):
    print("\n\\* resumed after an interrupt: the time covers the last invocation only.")

def loss_table(header, rows):
    """rows: (name, [(GPTQ loss, CDQuant loss) per linear]) → Σ of each, the change and how many linears improved."""
    if not rows:
        return
    print(f"\n| {header} | Σ loss GPTQ | Σ loss CDQuant | change | CDQuant lower in |")
    print("|---|---:|---:|---:|---:|")
    for name, losses in rows:
        sg, sc = sum(g for g, _ in losses), sum(c for _, c in losses)
        lower = sum(1 for g, c in losses if c < g)
        print(f"| {name} | {sg:.4g} | {sc:.4g} | {100 * (sc - sg) / sg:+.1f} % | {lower}/{len(losses)} |")

# Separate GPTQ and CDQuant runs: each propagates its own quantized outputs, so past layer 0 their H differ.
loss_table("GPTQ run vs its CDQuant run", [
    (g, [(a["loss"], b["loss"]) for a, b in zip(runs[g]["linears"], runs[c]["linears"])])
    for g, c in ((n, n.replace("gptq", "cdquant")) for n in runs)
    if "gptq" in g and c in runs and runs[g].get("linears") and runs[c].get("linears")])

# Within a CDQuant run, each linear's GPTQ start was solved on the same H as CDQuant's result: the like-for-like
# comparison. Runs made before the report scored the start on the undamped H have no startLoss (their initialLoss
# was the damped objective).
loss_table("CDQuant run: its GPTQ start vs its result, same H", [
    (n, [(l["startLoss"], l["loss"]) for l in r["linears"]])
    for n, r in runs.items() if r.get("linears") and all("startLoss" in l for l in r["linears"])])

seeded = {}    # config → {seed: PPL}
for name, r in runs.items():
    m = re.fullmatch(r"(.*)-s(\d+)", name)
    if m:
        seeded.setdefault(m.group(1), {})[int(m.group(2))] = r["ppl"]["perplexity"]
if seeded:
    seeds = sorted({s for v in seeded.values() for s in v})
    print("\n| config | " + " | ".join(f"seed {s}" for s in seeds) + " | seeds | PPL mean | spread (max − min) |")
    print("|---|" + "---:|" * (len(seeds) + 3))
    for k, v in seeded.items():
        p = list(v.values())
        print(f"| {k} | " + " | ".join(f"{v[s]:.3f}" if s in v else "—" for s in seeds) +
              f" | {len(p)} | {statistics.mean(p):.3f} | {max(p) - min(p):.3f} |")

staged = {n: r for n, r in runs.items() if r.get("subspace") and "statisticsSeconds" in r["subspace"]}
if staged:
    print("\n| run | statistics s | eigendecompositions s | solves s | calibration passes s | quantize s | eval s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in staged.items():
        s, e = r["subspace"]["statisticsSeconds"], r["subspace"]["basesSeconds"]
        solves = sum(l["seconds"] for l in r["linears"])
        q = r.get("quantize_seconds", 0)
        print(f"| {name} | {s:.0f} | {e:.1f} | {solves:.0f} | {q - s - e - solves:.0f} | {q:.0f} | {r['eval_seconds']} |")

# Two runs scored on the same windows: their per-window NLLs move together (hard windows are hard for both), so the
# paired difference is far tighter than the two ± standard errors suggest. PPL = exp(mean window NLL), so
# exp(mean Δ) is exactly the PPL ratio; the interval is exp(mean Δ ± 1.96 · SE of the paired Δ). It covers the
# evaluation text's sampling only, not the calibration seed's: for that, compare the seeds' spread.
# per-layer-res16: scripts/residual-bits-experiment.sh, the same folder with the basis-change inputs unquantized.
# shared-keyswap: scripts/key-basis-experiment.sh, the shared folder with per-head key bases swapped in (ResQ pools them);
# shared-keys-per-head: the same quantized with --key-basis per-head (weights solved with those keys too).
changes = (("resq", "coquant"), ("gptq", "cdquant"), ("per-layer-s", "shared-s"), ("per-layer-s", "per-layer-res16-s"),
           ("shared-s", "shared-keyswap-s"), ("per-layer-s", "shared-keyswap-s"),
           ("shared-s", "shared-keys-per-head-s"), ("per-layer-s", "shared-keys-per-head-s"))
pairs = [(a, a.replace(x, y)) for a in runs for x, y in changes if x in a and a.replace(x, y) in runs]
pairs = [(a, b) for a, b in pairs if runs[a]["ppl"].get("per_window_mean_nll")
         and len(runs[a]["ppl"]["per_window_mean_nll"]) == len(runs[b]["ppl"].get("per_window_mean_nll", []))]
if pairs:
    print("\n| run A | run B | PPL B ÷ PPL A | 95 % interval (paired over windows) | B lower in |")
    print("|---|---|---:|---:|---:|")
    for a, b in pairs:
        d = [y - x for x, y in zip(runs[a]["ppl"]["per_window_mean_nll"], runs[b]["ppl"]["per_window_mean_nll"])]
        m, se = statistics.mean(d), statistics.stdev(d) / math.sqrt(len(d))
        print(f"| {a} | {b} | {math.exp(m):.4f} | {math.exp(m - 1.96 * se):.4f} – {math.exp(m + 1.96 * se):.4f} | "
              f"{sum(1 for x in d if x < 0)}/{len(d)} |")
