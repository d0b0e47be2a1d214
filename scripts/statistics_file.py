"""Reads the float64 safetensors files a ResQ/CoQuant run writes (statistics-sSEED, bases-METHOD-GRANULARITY-sSEED).

Hand-written rather than the `safetensors` package: the format is an 8-byte header length, a JSON header and raw
little-endian data, and these scripts should run on the bare machine (numpy only)."""
import json
import os
import struct
import sys

import numpy as np


def load(path, keep=lambda name: True):
    """Returns ({name: float64 array}, metadata) for the tensors whose name passes `keep`."""
    if not os.path.exists(path):
        sys.exit(f"{path}: not found (written by scripts/results-table.sh's ResQ/CoQuant runs)")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, v in header.items():
        if name == "__metadata__" or not keep(name):
            continue
        if v["dtype"] != "F64":
            sys.exit(f"{path}: {name} is {v['dtype']}, expected F64")
        start, end = v["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype=np.float64).reshape(v["shape"])
    return tensors, header.get("__metadata__", {})
