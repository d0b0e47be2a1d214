"""Re-packs a GGUF model at another llama.cpp type, as llama.cpp's `llama-quantize MODEL OUT Q4_0` would lay it out
(that tool is not packaged for this machine): 2-D weights at TYPE where their input width allows it, token
embeddings and an untied output head at Q8_0 (llama.cpp's fallback for widths that are not multiples of 256),
norms and biases F32. Values come from dequantizing the source, so the result is the source's weights re-quantized.

Usage: python bench/gguf-requantize.py SRC.gguf OUT.gguf [Q4_0|Q8_0|F32]   (in the venv bench/llamacpp.sh makes)
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFReader, GGUFWriter, GGUFValueType
from gguf.quants import dequantize, quantize

src, out, kind = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else "Q4_0")
target = T[kind]
r = GGUFReader(src)
arch = str(bytes(r.fields["general.architecture"].parts[-1]), "utf-8")
w = GGUFWriter(out, arch)
for name, f in r.fields.items():
    if name.startswith("GGUF.") or name == "general.architecture":
        continue
    vt = f.types[0]
    if name == "general.file_type":
        w.add_uint32(name, {"Q4_0": 2, "Q8_0": 7, "F32": 0}[kind])
    elif vt == GGUFValueType.ARRAY:
        sub = f.types[1]
        if sub == GGUFValueType.STRING:
            w.add_array(name, [str(bytes(f.parts[i]), "utf-8") for i in f.data])
        else:
            w.add_array(name, [f.parts[i].tolist()[0] for i in f.data])
    elif vt == GGUFValueType.STRING:
        w.add_string(name, str(bytes(f.parts[-1]), "utf-8"))
    else:
        w.add_key_value(name, f.parts[-1].tolist()[0], vt)
for t in r.tensors:
    values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(x) for x in reversed(t.shape)])
    qtype = T.F32
    if values.ndim == 2:
        qtype = T.Q8_0 if t.name in ("token_embd.weight", "output.weight") and target != T.F32 else target
    data = quantize(values, qtype) if qtype != T.F32 else values
    w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=qtype)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(f"wrote {out} ({kind})", file=sys.stderr)
