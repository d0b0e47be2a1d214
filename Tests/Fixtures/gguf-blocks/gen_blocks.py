"""Random blocks of every block format GGUFFile dequantizes, with gguf-py's fp32 values as the expected output.

Run with gguf-py on the path (`pip install gguf==0.19.0`): python3 gen_blocks.py > blocks.json
The real model checksums only cover Q4_1, Q5_0, Q8_0, Q4_K, Q6_K and F32; this fills in the other formats and the
corners a trained model rarely hits (subnormal and huge f16 scales, every nibble value).
"""
import importlib.metadata
import json

import numpy as np
from gguf import GGMLQuantizationType as T, GGML_QUANT_SIZES, dequantize

rng = np.random.default_rng(20240607)

# byte offsets of the f16 scale fields inside one block; random bytes there could be inf/NaN
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def halves(n):
    h = rng.normal(0, 0.05, n).astype(np.float16)
    specials = np.array([6e-8, -3e-5, 65504, -1.0, 0.0, -0.0, 1e-4, 0.33325], dtype=np.float16)
    k = min(n, len(specials))
    h[rng.choice(n, k, replace=False)] = specials[:k]
    return h


out = []
for qtype, n_blocks in [(T.F16, 64), (T.BF16, 64), (T.Q4_0, 6), (T.Q4_1, 6), (T.Q5_0, 6), (T.Q5_1, 6), (T.Q8_0, 6),
                        (T.Q2_K, 3), (T.Q3_K, 3), (T.Q4_K, 3), (T.Q5_K, 3), (T.Q6_K, 3)]:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    if qtype == T.F16:
        raw = halves(n_blocks * type_size // 2).view(np.uint8).reshape(n_blocks, type_size)
    elif qtype == T.BF16:
        f = rng.normal(0, 1, n_blocks).astype(np.float32)
        f[:4] = [3.4e38, -1e-40, 0.0, -0.0]
        raw = (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n_blocks, type_size)
    else:
        for off in F16_FIELDS[qtype]:
            raw[:, off:off + 2] = halves(n_blocks).view(np.uint8).reshape(n_blocks, 2)
    values = np.asarray(dequantize(raw.reshape(-1), qtype), dtype=np.float32).reshape(-1)
    assert values.size == n_blocks * block_size and np.isfinite(values).all(), qtype.name
    out.append({"type": qtype.name, "type_id": int(qtype), "n_elements": int(values.size),
                "hex": raw.tobytes().hex(), "expected_bits": values.view(np.uint32).tolist()})

print(json.dumps({"generator": f"gen_blocks.py, gguf {importlib.metadata.version('gguf')}", "blocks": out}))
