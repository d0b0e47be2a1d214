"""llama.cpp (in-process, the `xllamacpp` wheel) on a GGUF: prefill tok/s at the given prompt lengths and decode tok/s
for N tokens after a short and a long prompt, the same workload `coquant bench` measures. Prompts are token ids
(the SmolLM2 WikiText-2 test ids of Tests/Fixtures, or --ids FILE with one id per line), so both sides see the
same tokens. Prints one JSON object with the median of --rounds runs; keys as `coquant bench --json`.

Usage: python bench/llamacpp.py MODEL.gguf [--threads 2] [--rounds 3] [--decode 128]
"""
import argparse, json, os, statistics, struct, sys

import xllamacpp as xlc

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--decode", type=int, default=128)
ap.add_argument("--ids", default=os.path.join(here, "..", "Tests", "Fixtures", "smollm2", "wikitext2_test_ids.safetensors"))
a = ap.parse_args()

if a.ids.endswith(".safetensors"):
    with open(a.ids, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        start, end = header["ids"]["data_offsets"]
        f.seek(8 + n + start)
        ids = list(struct.unpack(f"<{(end - start) // 4}i", f.read(end - start)))
else:
    ids = [int(x) for x in open(a.ids).read().split()]

p = xlc.CommonParams()
p.model.path = a.model
p.n_ctx = 2048 + a.decode + 64
p.n_batch = 2048
p.n_ubatch = 512
p.n_parallel = 1
p.cpuparams.n_threads = a.threads
p.cpuparams_batch.n_threads = a.threads
p.warmup = True
server = xlc.Server(p)


def run(prompt, n):
    r = server.handle_completions({"prompt": prompt, "max_tokens": n, "temperature": 0, "cache_prompt": False,
                                   "ignore_eos": True, "n_predict": n})
    if isinstance(r, str):
        r = json.loads(r)
    if "timings" not in r:
        sys.exit(f"llamacpp.py: no timings in the reply: {str(r)[:300]}")
    return r["timings"]


run(ids[:16], 4)     # warm-up
fig = {k: [] for k in ("prefill_512_tok_s", "prefill_2048_tok_s", "decode_short_tok_s", "decode_2k_tok_s")}
for _ in range(a.rounds):
    fig["prefill_512_tok_s"].append(run(ids[:512], 1)["prompt_per_second"])
    t = run(ids[:2048], a.decode)
    fig["prefill_2048_tok_s"].append(t["prompt_per_second"])
    fig["decode_2k_tok_s"].append(t["predicted_per_second"])
    fig["decode_short_tok_s"].append(run(ids[:8], a.decode)["predicted_per_second"])
out = {k: statistics.median(v) for k, v in fig.items()}
out["model_bytes"] = os.path.getsize(a.model)
out["model"] = a.model
out["threads"] = a.threads
print(json.dumps(out, indent=1))
