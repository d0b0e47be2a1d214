"""What interop_mlx.py and interop_transformers.py share: their arguments, our `coquant generate --simulate --json
--top-logprobs K` run, and the comparison of the client's teacher-forced log-softmax with it, printed as one JSON line.

The scripts are run as `python scripts/interop_X.py`; they import this module from their own folder.
"""
import argparse, json, sys


def parse_args():
    """MODEL (the export the client loads), OURS (our JSON), --k and --tol."""
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("ours")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--tol", type=float, required=True)
    return ap.parse_args()


def read_ours(path):
    """(prompt ids, our greedy path, our top-K log-probs per step) of our JSON."""
    ours = json.load(open(path))
    return ours["promptIds"], ours["ids"], ours["topLogprobs"]


def compare_and_exit(a, prompt, path, our_top, logprobs, **details):
    """Compares the client's log-softmax over prompt + path (logprobs[t] predicts the token at t + 1) with our top-K
    at each step, prints the result line (the `details` before "tol") and exits 1 when --tol fails or greedy differs."""
    worst, agree = 0.0, None
    for i, ours_i in enumerate(our_top):
        row = logprobs[len(prompt) - 1 + i]
        if agree is None and int(row.argmax()) != path[i]:
            agree = i
        worst = max(worst, max(abs(c["logprob"] - row[c["id"]]) for c in ours_i[: a.k]))
    agree = len(path) if agree is None else agree
    print(json.dumps({"model": a.model, "steps": len(path), "max_abs_dlogprob": float(f"{worst:.3g}"), "greedy_agree": agree,
                      **details, "tol": a.tol}))
    sys.exit(0 if worst <= a.tol and agree == len(path) else 1)
