"""mlx-lm against `coquant generate --simulate --json --top-logprobs K` on the folder an mlx export was written from.

Loads MLX_FOLDER with mlx-lm's own loader (`mlx_lm.utils.load_model`), checks that every decoder linear became a
`QuantizedLinear` (and the embedding a `QuantizedEmbedding` when the export packed it), then runs the prompt plus our
greedy path through the model in one forward (teacher-forced) and compares mlx's log-softmax at each step with our
top-K log-probabilities. Prints one JSON line:
  max_abs_dlogprob   largest |ours − mlx| over our top-K tokens, over all steps
  greedy_agree       how many leading steps have mlx's argmax equal to our greedy token (of N)
  quantized          QuantizedLinear layers found (of all decoder linears), and whether the embedding is quantized
and exits 1 when --tol fails, greedy tokens differ, or a linear that the export packed was not loaded as quantized.

Usage: python interop_mlx.py MLX_FOLDER OURS.json [--k 10] [--tol 1e-4]
"""
import argparse, json, sys
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("ours")
ap.add_argument("--k", type=int, default=10)
ap.add_argument("--tol", type=float, required=True)
a = ap.parse_args()

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.utils import load_model

ours = json.load(open(a.ours))
prompt, path, our_top = ours["promptIds"], ours["ids"], ours["topLogprobs"]
config = json.load(open(Path(a.model) / "config.json"))

model, _ = load_model(Path(a.model))
linears = [m for name, m in model.named_modules() if ".layers." in name and name.split(".")[-1].endswith("_proj")]
quantized = sum(isinstance(m, nn.QuantizedLinear) for m in linears)
embedding = isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
if "quantization" in config and quantized != len(linears):
    sys.exit(f"interop_mlx.py: {a.model}: only {quantized} of {len(linears)} linears loaded as QuantizedLinear")

# One forward over prompt + path: position len(prompt) − 1 + i predicts path[i].
logits = model(mx.array([prompt + path]))[0]
mx.eval(logits)
z = np.array(logits.astype(mx.float32), dtype=np.float64)
z -= z.max(axis=-1, keepdims=True)
logprobs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

worst, agree = 0.0, None
for i, ours_i in enumerate(our_top):
    row = logprobs[len(prompt) - 1 + i]
    if agree is None and int(row.argmax()) != path[i]:
        agree = i
    worst = max(worst, max(abs(c["logprob"] - row[c["id"]]) for c in ours_i[: a.k]))
agree = len(path) if agree is None else agree
print(json.dumps({"model": a.model, "steps": len(path), "max_abs_dlogprob": float(f"{worst:.3g}"), "greedy_agree": agree,
                  "quantized": f"{quantized}/{len(linears)} linears" + (", embedding" if embedding else ""),
                  "dtype": str(logits.dtype), "tol": a.tol}))
sys.exit(0 if worst <= a.tol and agree == len(path) else 1)
