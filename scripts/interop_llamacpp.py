"""llama.cpp (in-process, the `xllamacpp` wheel) against `coquant generate --json --top-logprobs K` on the same GGUF.

Reads our greedy run (prompt ids, generated ids, top-K log-probs per step) from OURS, then asks llama.cpp for its
own greedy continuation of the same prompt and, teacher-forced on our path, its top-K log-probabilities at every
step (prompt + our first i tokens, one token). Prints one JSON line:
  max_abs_dlogprob   largest |ours − llama.cpp| over the tokens both top-K lists hold, over all steps
  greedy_agree       how many leading greedy tokens are the same on both sides (of N)
and exits 1 when --tol or --exact-greedy fails.

Usage: python interop_llamacpp.py MODEL.gguf OURS.json [--k 10] [--tol 0.05] [--exact-greedy]
"""
import argparse, json, sys, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("ours")
ap.add_argument("--k", type=int, default=10)
ap.add_argument("--tol", type=float, required=True)
ap.add_argument("--exact-greedy", action="store_true")
a = ap.parse_args()

import xllamacpp as xlc

ours = json.load(open(a.ours))
prompt, path, our_top = ours["promptIds"], ours["ids"], ours["topLogprobs"]

p = xlc.CommonParams()
p.model.path = a.model
p.n_ctx = len(prompt) + len(path) + 16
p.n_batch = p.n_ctx
p.n_ubatch = p.n_ctx
p.n_parallel = 1
p.cpuparams.n_threads = 2
p.cpuparams_batch.n_threads = 2
p.warmup = False
server = xlc.Server(p)
# The native /completion endpoint of the in-process server: it returns the generated ids themselves ("tokens");
# the OpenAI-style handle_completions drops ids whose text is an incomplete UTF-8 sequence.
address = server.listening_address


def complete(ids, n):
    body = {"prompt": ids, "n_predict": n, "temperature": 0, "n_probs": a.k, "cache_prompt": False,
            "ignore_eos": True, "return_tokens": True}
    req = urllib.request.Request(address + "/completion", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    r = json.loads(urllib.request.urlopen(req).read())
    # Log-probs of a token whose text ends in an incomplete UTF-8 sequence (byte tokens, common in random tiny
    # models) are held back with it: the list lacks such leading tokens, so it is aligned to the last tokens.
    tokens, probs = r["tokens"], r.get("completion_probabilities") or []
    return tokens, [None] * (len(tokens) - len(probs)) + probs


theirs, _ = complete(prompt, len(path))
agree = next((i for i, (x, y) in enumerate(zip(theirs, path)) if x != y), len(path))
worst, compared = 0.0, 0
for i, ours_i in enumerate(our_top):
    _, probs = complete(prompt + path[:i], 1)
    if probs[0] is None:
        continue
    compared += 1
    their = {c["id"]: c["logprob"] for c in probs[0]["top_logprobs"]}
    common = [c for c in ours_i if c["id"] in their]
    if not common:
        sys.exit(f"interop_llamacpp.py: {a.model}: step {i}: no token in both top-{a.k} lists")
    worst = max(worst, max(abs(c["logprob"] - their[c["id"]]) for c in common))
print(json.dumps({"model": a.model, "steps": len(path), "compared": compared, "max_abs_dlogprob": round(worst, 5),
                  "greedy_agree": agree, "tol": a.tol}))
ok = worst <= a.tol and compared >= 1 and (agree == len(path) or not a.exact_greedy)
sys.exit(0 if ok else 1)
