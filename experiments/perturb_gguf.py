"""An experiment for issue 24's GPTQ-with-small-groups defect: SmolLM2's only checkpoint here is a Q4_1 GGUF, so every
32-column block of every linear already lies on a 16-level grid. This writes an F32 GGUF whose linears are moved off
that grid by uniform noise of one quantization step, w + d·u with u ~ U(−½, ½) and d the block's own Q4_1 step — a
stand-in for the unquantized model those codes were rounded from. Everything else is copied unchanged.

Usage: python experiments/perturb_gguf.py IN.gguf OUT.gguf [--seed 0]   (needs the `gguf` and `numpy` packages)
"""
import argparse

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize

ap = argparse.ArgumentParser()
ap.add_argument("src")
ap.add_argument("dst")
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()
rng = np.random.default_rng(a.seed)

r = GGUFReader(a.src)
arch = r.fields["general.architecture"].contents()
w = GGUFWriter(a.dst, arch)
for name, field in r.fields.items():
    if name.startswith("GGUF.") or name in ("general.architecture", "general.alignment"):
        continue
    vtype = field.types[0]
    if vtype == GGUFValueType.ARRAY:
        w.add_array(name, field.contents())
    else:
        w.add_key_value(name, field.contents(), vtype)
for t in r.tensors:
    values = dequantize(t.data, t.tensor_type).astype(np.float32)
    shape = tuple(int(x) for x in reversed(t.shape))          # numpy order: [out, in]
    values = values.reshape(shape)
    if t.tensor_type == GGMLQuantizationType.Q4_1 and t.name.startswith("blk."):
        raw = np.frombuffer(t.data.tobytes(), dtype=np.uint8).reshape(-1, 20)
        d = raw[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]          # each block's step
        noise = rng.uniform(-0.5, 0.5, size=(d.size, 32)).astype(np.float32) * d[:, None]
        values = values + noise.reshape(shape)
    w.add_tensor(t.name, values, raw_dtype=GGMLQuantizationType.F32)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
