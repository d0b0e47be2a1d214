"""transformers against `coquant generate --simulate --json --top-logprobs K` on the folder an export was written from.

Loads EXPORT (a `coquant export --format compressed-tensors` or `--format hf` folder) with
`AutoModelForCausalLM.from_pretrained(EXPORT, dtype=torch.float32)` on CPU. For a compressed-tensors folder it checks
that the quantizer ran (CompressedTensorsHfQuantizer) and that every decoder linear carries the config's weight scheme
(num_bits, symmetric, strategy) and was decompressed from `weight_packed` into a dense float32 weight; for an hf folder
that no quantization was attached. Then it runs the prompt plus our greedy path through the model in one forward
(teacher-forced) and compares transformers' log-softmax at each step with our top-K log-probabilities. Prints one JSON
line:
  max_abs_dlogprob   largest |ours − transformers| over our top-K tokens, over all steps
  greedy_agree       how many leading steps have transformers' argmax equal to our greedy token (of N)
  linears            decoder linears found with the expected scheme (compressed-tensors) or plain (hf)
and exits 1 when --tol fails, greedy tokens differ, or a linear was not loaded as expected.

Usage: python interop_transformers.py EXPORT OURS.json [--k 10] [--tol 1e-4]
"""
import json, os, sys, warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from interop_common import compare_and_exit, parse_args, read_ours

a = parse_args()

warnings.filterwarnings("ignore")
import torch
import transformers
from transformers import AutoModelForCausalLM

transformers.logging.set_verbosity_error()
torch.manual_seed(0)
prompt, path, our_top = read_ours(a.ours)
config = json.load(open(Path(a.model) / "config.json"))
qc = config.get("quantization_config")

want = qc["config_groups"]["group_0"]["weights"] if qc else None
# transformers 5.25 + compressed-tensors 0.20.1 cannot load an asymmetric pack-quantized folder the default way: the
# module layout it builds (compress_model on meta weights) keeps weight_zero_point unpacked, [out, groups], while
# pack-quantized stores it packed along the output dimension, [out·bits/32, groups] (what vLLM reads and
# compress() writes), so from_pretrained fails with a size mismatch. Those folders load with dequantize=True, which
# runs the same PackedQuantizationCompressor.decompress on the checkpoint's own tensors while loading.
dequantize = want is not None and not want["symmetric"]
kwargs = {"quantization_config": transformers.CompressedTensorsConfig(dequantize=True)} if dequantize else {}
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, device_map="cpu", **kwargs)
model.eval()
linears = {n: m for n, m in model.named_modules() if ".layers." in n and n.split(".")[-1].endswith("_proj")}
problems = []
if want is not None:
    quantizer = type(getattr(model, "hf_quantizer", None)).__name__
    if quantizer != "CompressedTensorsHfQuantizer" and not dequantize:     # dequantize=True drops it after loading
        problems.append(f"quantizer {quantizer}, not CompressedTensorsHfQuantizer")
    for n, m in linears.items():
        w = getattr(getattr(m, "quantization_scheme", None), "weights", None)
        if dequantize:
            if w is not None:
                problems.append(f"{n}: still carries a quantization scheme after dequantize=True")
        elif w is None or w.num_bits != want["num_bits"] or w.symmetric != want["symmetric"] \
                or getattr(w.strategy, "value", w.strategy) != want["strategy"]:
            problems.append(f"{n}: scheme {w}")
        elif not hasattr(m, "weight_packed"):
            problems.append(f"{n}: not loaded compressed (no weight_packed)")
else:
    plain = sum(getattr(m, "quantization_scheme", None) is None for m in linears.values())
    if plain != len(linears):
        problems.append(f"only {plain} of {len(linears)} linears plain")
if problems:
    sys.exit(f"interop_transformers.py: {a.model}: " + "; ".join(problems[:3]))

# One forward over prompt + path: position len(prompt) − 1 + i predicts path[i].
with torch.no_grad():
    logits = model(torch.tensor([prompt + path])).logits[0].to(torch.float64)
logprobs = torch.log_softmax(logits, dim=-1).numpy()

# After the forward every decoder linear holds a dense float32 weight; for a quantized export, each group of each row
# has at most 2^bits distinct values (the weights really are the codes on their grids).
grid_ok = 0
for n, m in linears.items():
    if hasattr(m, "weight_packed") or m.weight.dtype != torch.float32:
        problems.append(f"{n}: not decompressed (weight {m.weight.dtype}, weight_packed {hasattr(m, 'weight_packed')})")
        continue
    if want is None:
        grid_ok += 1
        continue
    wt = m.weight.detach()
    g = want["group_size"] if want["strategy"] == "group" else wt.shape[1]
    v = wt.reshape(wt.shape[0], -1, g).sort(dim=-1).values
    distinct = ((v[..., 1:] != v[..., :-1]).sum(dim=-1) + 1).max().item()
    if distinct > 2 ** want["num_bits"]:
        problems.append(f"{n}: a group holds {distinct} distinct values, more than 2^{want['num_bits']}")
    else:
        grid_ok += 1
if problems:
    sys.exit(f"interop_transformers.py: {a.model}: " + "; ".join(problems[:3]))
if want is None:
    what = f"{grid_ok}/{len(linears)} dense ({config.get('dtype') or config.get('torch_dtype')} file)"
else:
    what = (f"{grid_ok}/{len(linears)} {want['num_bits']}-bit {want['strategy']} {'sym' if want['symmetric'] else 'asym'}"
            + (" (dequantize=True)" if dequantize else " decompressed on first forward"))

compare_and_exit(a, prompt, path, our_top, logprobs, linears=what, dtype=str(model.dtype).replace("torch.", ""))
