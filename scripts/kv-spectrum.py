#!/usr/bin/env python3
"""Why 4-bit KV costs Qwen2.5-Coder-0.5B so much more than SmolLM2 under QuaRot (issue 4's Qwen table).

Reads a statistics file (the second moments a ResQ/CoQuant run collects on the full-precision norm-fused model) and
prints, per layer and KV head, the share of the post-RoPE keys' (and the values') energy in their top eigenvector.
A key head whose energy sits almost all in one direction is dominated by a component that is nearly the same for
every token (Qwen2's k_proj bias): adding the same vector to every key adds the same q·b to every score of a query,
which softmax ignores, yet it sets the per-(token, head) 4-bit range, so the part of the key that decides the
attention pattern is rounded with a step made for the large component.

The last column simulates QuaRot's key quantizer on Gaussian samples with the same second moment (a stand-in: the
file holds moments, not keys): Hadamard(head_dim) rotation, 4-bit per (token, head), asymmetric with 0 in range, and
reports the rounding error relative to the energy outside the top direction.

    python3 scripts/kv-spectrum.py runs/qwen2.5-coder-0.5b/statistics-s0.safetensors runs/smollm2/statistics-s0.safetensors

With `--bias MODEL.gguf` (needs `pip install gguf`) it also prints, per key head, ‖b‖² of the k_proj bias over the
mean key energy trace(C)/tokens — RoPE keeps norms, so a value near 1 says the bias is nearly all of the key:

    python3 scripts/kv-spectrum.py --bias models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf runs/qwen2.5-coder-0.5b/statistics-s0.safetensors
"""
import sys

import numpy as np

from analysis import load, round_per_row


def hadamard(n):
    H = np.ones((1, 1))
    while len(H) < n:
        H = np.block([[H, H], [H, -H]])
    assert len(H) == n, f"head_dim {n} is not a power of 2"
    return H / np.sqrt(n)


def error_outside_top(C, rng, n=4096):
    """Relative 4-bit error of Hadamard-rotated Gaussian keys with second moment C, measured against the energy
    outside C's top eigenvector."""
    e, V = np.linalg.eigh(C)
    X = (rng.standard_normal((n, len(C))) * np.sqrt(np.maximum(e, 0))) @ V.T
    Y = X @ hadamard(len(C))
    D = Y - round_per_row(Y, 4)   # the error in the rotated basis has the same energy as in the original
    rest = X - np.outer(X @ V[:, -1], V[:, -1])
    return (D ** 2).sum() / (rest ** 2).sum()


def key_biases(path):
    """{layer: k_proj bias as (KV heads, head_dim)} from a GGUF (qwen2 stores attn_k.bias unpermuted)."""
    try:
        import gguf
    except ImportError:
        sys.exit("--bias needs the gguf package: python3 -m pip install gguf")
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    return {int(name.split(".")[1]): np.array(t.data, dtype=np.float64)
            for name, t in tensors.items() if name.endswith("attn_k.bias")}


def main():
    args = sys.argv[1:]
    biases = None
    if args[:1] == ["--bias"]:
        if len(args) != 3:
            sys.exit("--bias MODEL.gguf takes exactly one statistics file, collected from that model")
        biases, args = key_biases(args[1]), args[2:]
    rng = np.random.default_rng(0)
    top = lambda C: np.linalg.eigvalsh(C)[-1] / np.trace(C)
    fmt = lambda xs, f: " ".join(f % x for x in xs)
    for path in args or ["runs/qwen2.5-coder-0.5b/statistics-s0.safetensors"]:
        S, meta = load(path, keep=lambda name: name.endswith((".key_pos", ".value")))
        tokens = int(meta["tokens"])
        layers = len([k for k in S if k.endswith(".key_pos")])
        print(path)
        print("layer  key top-eigen share per head   value top-eigen share   simulated 4-bit key error ÷ energy outside top")
        summary = {"key": [], "value": [], "error": []}
        for i in range(layers):
            K, V = S[f"layer.{i}.self_attn.key_pos"], S[f"layer.{i}.self_attn.value"]
            key, value = [top(C) for C in K], [top(C) for C in V]
            error = [error_outside_top(C, rng) for C in K]
            summary["key"] += key
            summary["value"] += value
            summary["error"] += error
            line = f"{i:5d}  {fmt(key, '%.3f'):28s}  {fmt(value, '%.3f'):22s}  {fmt(error, '%.3f'):18s}"
            if biases is not None:
                b = biases[i].reshape(len(K), -1)
                line += "  bias ‖b‖² ÷ key energy " + fmt([(b[h] ** 2).sum() / (np.trace(C) / tokens) for h, C in enumerate(K)], "%.3f")
            print(line)
        for name, threshold in [("key", 0.9), ("value", 0.9), ("error", 0.1)]:
            xs = np.array(summary[name])
            print(f"  {name:5s}: median {np.median(xs):.3f}, max {xs.max():.3f}, "
                  f"heads above {threshold}: {(xs > threshold).sum()}/{len(xs)}")


if __name__ == "__main__":
    main()
