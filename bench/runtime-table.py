"""Markdown tables of what bench/runtime.sh and bench/runtime-ppl.sh wrote to results/runtime/<set>/.

Usage: python3 bench/runtime-table.py results/runtime/smollm2
"""
import glob, json, os, sys

folder = sys.argv[1]
keys = ["prefill_512_tok_s", "prefill_2048_tok_s", "decode_short_tok_s", "decode_2k_tok_s"]
llama = json.load(open(os.path.join(folder, "llamacpp-q4_0.json")))
rows = []
for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
    name = os.path.basename(path)[:-5]
    if name == "llamacpp-q4_0":
        continue
    d = json.load(open(path))
    rows.append((name, d))
def kv(d):
    return f"{d['kv_cache_bytes'] / 1e6:.1f}" if "kv_cache_bytes" in d else ""

def rss_target(d):
    # The bound: peak RSS while generating ≤ 1.5 × the folder + the KV cache.
    return f"{d['peak_rss_bytes'] / (1.5 * d['model_bytes'] + d['kv_cache_bytes']):.2f}" if "kv_cache_bytes" in d else ""

print("| model | pp512 | pp2048 | tg128 | tg128 @ 2k | MB on disk | peak RSS MB | KV cache MB | RSS ÷ (1.5 × disk + KV) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
fp = rows[0][1]["baseline"] if rows else None
if fp:
    print(f"| our fp32 (median of the runs below) | " + " | ".join(
        f"{sorted(r[1]['baseline'][k] for r in rows)[len(rows) // 2]:.1f}" for k in keys)
          + f" | {fp['model_bytes'] / 1e6:.1f} | {fp['peak_rss_bytes'] / 1e6:.0f} | {kv(fp)} | |")
print(f"| llama.cpp Q4_0 | " + " | ".join(f"{llama[k]:.1f}" for k in keys) + f" | {llama['model_bytes'] / 1e6:.1f} | | | |")
for name, d in rows:
    print(f"| {name} | " + " | ".join(f"{d[k]:.1f}" for k in keys) + f" | {d['model_bytes'] / 1e6:.1f} | {d['peak_rss_bytes'] / 1e6:.0f} | {kv(d)} | {rss_target(d)} |")
print()
print("| ratio | pp512 | pp2048 | tg128 | tg128 @ 2k | bytes |")
print("|---|---:|---:|---:|---:|---:|")
for name, d in rows:
    b = d["baseline"]
    print(f"| {name} ÷ our fp32 (same run) | " + " | ".join(f"{d[k] / b[k]:.2f}×" for k in keys) + f" | {d['model_bytes'] / b['model_bytes']:.2f}× |")
    print(f"| {name} ÷ llama.cpp Q4_0 | " + " | ".join(f"{d[k] / llama[k]:.2f}×" for k in keys) + f" | {d['model_bytes'] / llama['model_bytes']:.2f}× |")
eq = os.path.join(folder, "runtime-vs-simulate.jsonl")
if os.path.exists(eq):
    print()
    print("| scheme | PPL runtime | PPL --simulate | runtime ÷ simulate |")
    print("|---|---:|---:|---:|")
    for line in open(eq):
        e = json.loads(line)
        print(f"| {e['scheme']} | {e['runtime']:.3f} | {e['simulate']:.3f} | {e['ratio']:.4f} |")
