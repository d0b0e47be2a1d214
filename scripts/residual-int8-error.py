#!/usr/bin/env python3
"""Why the per-layer int8 residual rounding costs ResQ more than CoQuant (issue 4's residual-bits experiment).

In per-layer mode the residual stream is rounded to int8 per token at both basis changes of every layer
(COQUANT_RESQ.md §2.4). This measures that rounding on the statistics pass's sample tokens (256 evenly spaced tokens of
the first calibration window, full-precision norm-fused model), each basis-change input expressed in the basis it is
in when it is rounded: basis_change_1 of layer i gets the MLP input of layer i in basis Q_a^(i), basis_change_2 the
attention input of layer i+1 in basis Q_m^(i). The samples are RMS-normalised, which per-token rounding ignores.

Per method it prints, over the 59 sites × 256 tokens: the relative error ‖x − q(x)‖²/‖x‖² of the whole token, the
share of the token's energy in the high block (last r channels), and the relative error of the low block alone — the
int8 step is set by the whole token, so the less energy a basis leaves in the low block, the coarser it is there.

    python3 scripts/residual-int8-error.py runs/smollm2 0      # folder of statistics-s0 and bases-*-per-layer-s0
"""
import sys

import numpy as np

from analysis import load, round_per_row


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "runs/smollm2"
    seed = sys.argv[2] if len(sys.argv) > 2 else "0"
    S, meta = load(f"{folder}/statistics-s{seed}.safetensors")
    if int(meta.get("sample_tokens", 0)) == 0:
        sys.exit(f"{folder}/statistics-s{seed}.safetensors: no sample tokens stored")
    error = {}
    for method in ["resq", "coquant"]:
        B, bmeta = load(f"{folder}/bases-{method}-per-layer-s{seed}.safetensors")
        r, L = int(bmeta["high"]), len([k for k in B if k.endswith(".self_attn")])
        total, low, share = [], [], []
        for i in range(L):
            Qa, Qm = B[f"layer.{i}.self_attn"] @ B["R1"], B[f"layer.{i}.mlp"] @ B["R1"]
            assert np.abs(Qa.T @ Qa - np.eye(len(Qa))).max() < 1e-9, f"layer {i}: basis not orthogonal"
            inputs = [S[f"layer.{i}.mlp.sample"] @ Qa]
            if i + 1 < L:
                inputs.append(S[f"layer.{i + 1}.self_attn.sample"] @ Qm)
            for X in inputs:
                D = X - round_per_row(X, 8)
                total.append((D ** 2).sum(1) / (X ** 2).sum(1))
                low.append((D[:, :-r] ** 2).sum(1) / (X[:, :-r] ** 2).sum(1))
                share.append((X[:, -r:] ** 2).sum(1) / (X ** 2).sum(1))
        error[method] = np.array(low)
        print(f"{method:8s} seed {seed}: whole-token error {np.mean(total):.3e}, high-block energy share "
              f"{np.mean(share):.3f}, low-block error {np.mean(low):.3e} (median {np.median(low):.3e})")
    ratio = error["resq"].mean(1) / error["coquant"].mean(1)
    print(f"low-block error ResQ ÷ CoQuant per site: median {np.median(ratio):.2f} "
          f"(range {ratio.min():.2f}–{ratio.max():.2f}), ResQ larger at {(ratio > 1).sum()}/{len(ratio)} sites")


if __name__ == "__main__":
    main()
