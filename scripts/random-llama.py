#!/usr/bin/env python3
"""Writes a Llama-shaped Hugging Face folder (config.json, model.safetensors) with random weights, of any size: for
tests and measurements that need a shape no small real model has (the K-quants' 256-wide inputs) or a size no
download gives (a 7B-shaped checkpoint for memory claims).

  python3 scripts/random-llama.py OUT --layers 4 --hidden 256 --ffn 512 --heads 4 --kv-heads 1 [--vocab 300]
      [--head-dim D] [--dtype f32|bf16] [--tied] [--seed S] [--tokenizer tokenizer.json]

Matrices are uniform in ±0.06 with every 37th input column six times larger (real activations and weights have
outlier channels, which is what makes a solver's choices differ from plain rounding), the embedding table in ±1 and
an untied head in ±0.3 (the layers then move the residual stream as much as the embedding does, and the next-token
distribution is peaked as a real model's but set by the layers, so a wrong weight shows in the log-probabilities; a
tied head would make every token predict itself); norms are 1. numpy is used when
it is installed (needed for large models); without it, the standard library writes small ones.
"""
import argparse
import json
import os
import shutil
import struct
import sys

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("out")
p.add_argument("--layers", type=int, required=True)
p.add_argument("--hidden", type=int, required=True)
p.add_argument("--ffn", type=int, required=True)
p.add_argument("--heads", type=int, required=True)
p.add_argument("--kv-heads", type=int, required=True)
p.add_argument("--head-dim", type=int)
p.add_argument("--vocab", type=int, default=300)
p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
p.add_argument("--tied", action="store_true")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--tokenizer", help="a tokenizer.json to copy into the folder")
a = p.parse_args()
hd = a.head_dim or a.hidden // a.heads
if os.path.exists(a.out):
    sys.exit(f"random-llama: {a.out} already exists")

shapes = [("model.embed_tokens.weight", [a.vocab, a.hidden]), ("model.norm.weight", [a.hidden])]
if not a.tied:
    shapes.append(("lm_head.weight", [a.vocab, a.hidden]))
for l in range(a.layers):
    q = f"model.layers.{l}."
    shapes += [(q + "input_layernorm.weight", [a.hidden]), (q + "post_attention_layernorm.weight", [a.hidden]),
               (q + "self_attn.q_proj.weight", [a.heads * hd, a.hidden]),
               (q + "self_attn.k_proj.weight", [a.kv_heads * hd, a.hidden]),
               (q + "self_attn.v_proj.weight", [a.kv_heads * hd, a.hidden]),
               (q + "self_attn.o_proj.weight", [a.hidden, a.heads * hd]),
               (q + "mlp.gate_proj.weight", [a.ffn, a.hidden]), (q + "mlp.up_proj.weight", [a.ffn, a.hidden]),
               (q + "mlp.down_proj.weight", [a.hidden, a.ffn])]

try:
    import numpy as np
except ImportError:
    np = None
width = 4 if a.dtype == "f32" else 2


def tensor_bytes(name, shape, seed):
    """The tensor's little-endian bytes, row by row (a generator, so memory stays one row block)."""
    rows, cols = (1, shape[0]) if len(shape) == 1 else shape
    big, small = {"model.embed_tokens.weight": (1.0, 1.0), "lm_head.weight": (0.3, 0.3)}.get(name, (0.36, 0.06))
    if np is not None:
        g = np.random.default_rng(seed)
        scale = np.where(np.arange(cols) % 37 == 0, big, small).astype(np.float32)
        for r0 in range(0, rows, 1024):
            n = min(1024, rows - r0)
            v = np.ones((n, cols), np.float32) if len(shape) == 1 else (g.random((n, cols), np.float32) * 2 - 1) * scale
            yield v.tobytes() if a.dtype == "f32" else (v.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        return
    import random
    from array import array
    g = random.Random(seed)
    for _ in range(rows):
        v = array("f", [1.0] * cols if len(shape) == 1 else
                  [(g.random() * 2 - 1) * (big if c % 37 == 0 else small) for c in range(cols)])
        if sys.byteorder != "little":
            v.byteswap()
        if a.dtype == "f32":
            yield v.tobytes()
        else:
            words = array("I", v.tobytes())
            yield array("H", [w >> 16 for w in words]).tobytes()


header, offset = {}, 0
for name, shape in shapes:
    n = width * (shape[0] if len(shape) == 1 else shape[0] * shape[1])
    header[name] = {"dtype": "F32" if a.dtype == "f32" else "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
    offset += n
blob = json.dumps(header, sort_keys=True).encode()
blob += b" " * (-len(blob) % 8)
tmp = a.out + ".partial"
shutil.rmtree(tmp, ignore_errors=True)
os.makedirs(tmp)
with open(os.path.join(tmp, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob)
    for i, (name, shape) in enumerate(shapes):
        for chunk in tensor_bytes(name, shape, a.seed * 100003 + i):
            f.write(chunk)
config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": a.hidden,
          "intermediate_size": a.ffn, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
          "num_key_value_heads": a.kv_heads, "head_dim": hd, "vocab_size": a.vocab, "max_position_embeddings": 4096,
          "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": a.tied, "hidden_act": "silu",
          "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32" if a.dtype == "f32" else "bfloat16"}
with open(os.path.join(tmp, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
if a.tokenizer:
    shutil.copy(a.tokenizer, os.path.join(tmp, "tokenizer.json"))
os.rename(tmp, a.out)
print(f"random-llama: wrote {a.out} ({offset / 1e6:.1f} MB of weights, {len(shapes)} tensors)")
