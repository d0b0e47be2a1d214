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
import json, os, sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from interop_common import compare_and_exit, parse_args, read_ours

a = parse_args()

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.utils import load_model

prompt, path, our_top = read_ours(a.ours)
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

compare_and_exit(a, prompt, path, our_top, logprobs,
                 quantized=f"{quantized}/{len(linears)} linears" + (", embedding" if embedding else ""), dtype=str(logits.dtype))
