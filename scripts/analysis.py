"""Shared by the analysis scripts (residual-int8-error.py, kv-spectrum.py): reading the float64 safetensors files a
ResQ/CoQuant run writes (statistics-sSEED, bases-METHOD-GRANULARITY-sSEED), and the activation quantizer they replay.

The reader is hand-written rather than the `safetensors` package: the format is an 8-byte header length, a JSON header
and raw little-endian data, and these scripts should run on the bare machine (numpy only)."""
import json
import os
import struct
import sys

import numpy as np


def load(path, keep=lambda name: True):
    """Returns ({name: float64 array}, metadata) for the tensors whose name passes `keep`. The file is memory-mapped,
    so only those tensors are read (a Qwen statistics file is 400 MB)."""
    if not os.path.exists(path):
        sys.exit(f"{path}: not found (written by scripts/results-table.sh's ResQ/CoQuant runs)")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    tensors = {}
    for name, v in header.items():
        if name == "__metadata__" or not keep(name):
            continue
        if v["dtype"] != "F64":
            sys.exit(f"{path}: {name} is {v['dtype']}, expected F64")
        start, end = v["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype=np.float64).reshape(v["shape"])
    return tensors, header.get("__metadata__", {})


def round_per_row(X, bits):
    """The project's ActivationQuantizer with 0 in range: per row, asymmetric, clip 1.0, 2^bits − 1 steps (the
    residual stream at basis changes, K per (token, head))."""
    lo = np.minimum(X.min(1, keepdims=True), 0)
    hi = np.maximum(X.max(1, keepdims=True), 0)
    s = (hi - lo) / (2 ** bits - 1)
    z = np.round(-lo / s)
    return (np.clip(np.round(X / s) + z, 0, 2 ** bits - 1) - z) * s
