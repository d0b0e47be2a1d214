#!/usr/bin/env python3
"""fp32 prefill of a SmolLM2-135M-shaped Llama in PyTorch + transformers on the CPU.

The reference side of bench/prefill.sh: one forward pass over `--tokens` token ids (batch 1,
use_cache=False, full [tokens x vocab] logits as a perplexity evaluation needs them), with random
weights (the shape, not the values, sets the speed). One warm-up pass, then `--repeats` timed passes;
the last line is machine-readable:

    RESULT torch tokens_per_s=<median> seconds=<median> threads=<n> version=<torch version>

`--profile` adds one torch.profiler pass and prints how much of the CPU time is GEMM / attention.
Set up the interpreter with bench/setup-torch.sh and run with bench/.venv/bin/python.
"""
import argparse
import statistics
import sys
import time

# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M-Instruct config.json).
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    hidden_act="silu",
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    attention_bias=False,
    mlp_bias=False,
    bos_token_id=1,
    eos_token_id=2,
)

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")


def forward_flops(c, n):
    """Multiply-add FLOPs (2 per MAC) of one prefill: projections + MLP + lm_head GEMMs, causal attention."""
    h, i, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    per_token_layer = h * q + 2 * h * kv + q * h + 3 * h * i
    gemm = 2 * n * (c["num_hidden_layers"] * per_token_layer + h * c["vocab_size"])
    # QK^T and PV over the causal triangle, all query heads
    attn = 2 * 2 * c["num_hidden_layers"] * c["num_attention_heads"] * hd * n * (n + 1) // 2
    return gemm, attn


def build_model(torch, transformers):
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(SMOLLM2_135M)
    theta = kw.pop("rope_theta")
    major = int(transformers.__version__.split(".")[0])
    if major >= 5:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    else:
        kw["rope_theta"] = theta
    config = LlamaConfig(**kw, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    impl = model.config._attn_implementation
    if impl != "sdpa":
        sys.exit(f"prefill_torch: error: attention implementation is {impl!r}, wanted 'sdpa'")
    return model


def profile_once(torch, model, ids, top):
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(input_ids=ids, use_cache=False)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    if total <= 0:
        print("profile: no CPU time recorded")
        return

    def share(pred):
        return sum(e.self_cpu_time_total for e in events if pred(e.key)) / total

    gemm = share(lambda k: k in GEMM_OPS)
    attn = share(lambda k: "scaled_dot_product" in k or "flash_attention" in k)
    print(f"profile: total self CPU time {total / 1e6:.3f} s (profiler overhead included)")
    print(f"profile: GEMM share (self time of {', '.join(GEMM_OPS)}) = {gemm:.3f}")
    print(f"profile: attention share (self time of scaled_dot_product*/flash_attention* ops) = {attn:.3f}")
    print(f"profile: everything else = {1 - gemm - attn:.3f}")
    print(f"profile: top {top} ops by self CPU time:")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        print(f"  {e.key:<52} {e.self_cpu_time_total / 1e6:8.3f} s {e.self_cpu_time_total / total:6.1%}  calls={e.count}")
    print(f"RESULT torch-profile gemm_share={gemm:.4f} attention_share={attn:.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--tokens", type=int, default=2048, help="prompt length (default 2048)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes after one warm-up (default 3)")
    ap.add_argument("--profile", action="store_true", help="also run one torch.profiler pass and print op shares")
    ap.add_argument("--top", type=int, default=15, help="ops listed by --profile (default 15)")
    args = ap.parse_args()
    if args.threads < 1 or args.tokens < 1 or args.repeats < 1:
        ap.error("--threads, --tokens and --repeats must be >= 1")
    if args.tokens > SMOLLM2_135M["max_position_embeddings"]:
        ap.error(f"--tokens is above max_position_embeddings {SMOLLM2_135M['max_position_embeddings']}")

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} transformers {transformers.__version__} threads={torch.get_num_threads()} "
          f"mkl={torch.backends.mkl.is_available()} mkldnn={torch.backends.mkldnn.is_available()} "
          f"cpu_capability={torch.backends.cpu.get_cpu_capability()}")

    t0 = time.perf_counter()
    model = build_model(torch, transformers)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"model: SmolLM2-135M shape, {nparams / 1e6:.1f}M params fp32, random init, "
          f"attn={model.config._attn_implementation}, built in {time.perf_counter() - t0:.1f} s")

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (1, args.tokens), generator=gen)
    gemm_flops, attn_flops = forward_flops(SMOLLM2_135M, args.tokens)
    flops = gemm_flops + attn_flops
    print(f"work: {args.tokens} tokens, ~{gemm_flops / 1e9:.0f} GFLOP GEMM + ~{attn_flops / 1e9:.0f} GFLOP attention")

    def run():
        with torch.inference_mode():
            start = time.perf_counter()
            out = model(input_ids=ids, use_cache=False)
            logits = out.logits
            elapsed = time.perf_counter() - start
        expect = (1, args.tokens, SMOLLM2_135M["vocab_size"])
        if tuple(logits.shape) != expect or logits.dtype != torch.float32:
            sys.exit(f"prefill_torch: error: logits {tuple(logits.shape)} {logits.dtype}, wanted {expect} float32")
        return elapsed

    warm = run()
    print(f"warm-up: {warm:.3f} s")
    times = []
    for r in range(args.repeats):
        s = run()
        times.append(s)
        print(f"pass {r + 1}/{args.repeats}: {s:.3f} s  {args.tokens / s:.1f} tokens/s  {flops / s / 1e9:.1f} GFLOP/s")

    if args.profile:
        profile_once(torch, model, ids, args.top)

    med = statistics.median(times)
    print(f"RESULT torch tokens_per_s={args.tokens / med:.2f} seconds={med:.4f} "
          f"threads={torch.get_num_threads()} version={torch.__version__}")


if __name__ == "__main__":
    main()
