#!/usr/bin/env bash
# Creates bench/.venv with a CPU PyTorch and transformers, for bench/prefill_torch.py.
# Does nothing when bench/.venv already imports both at the pinned versions.
#
# Which torch:
#   PyPI's Linux x86-64 `torch` wheel is always the CUDA build. Its libtorch_cuda.so / libtorch_python.so
#   have DT_NEEDED entries on libcudart, libcublas, libcudnn, libnccl, ... so `pip install --no-deps torch`
#   does NOT import without the nvidia-* / cuda-toolkit wheels (ValueError "libcublasLt.so.*[0-9] not found",
#   checked with 2.15.0). Every torch with a cp311 wheel (>= 1.13) is built that way, so there is no older
#   PyPI version that avoids them either.
#   1. If pip can see a CPU-only wheel `torch==$TORCH_VERSION+cpu` (on this machine image pip's config has
#      find-links=/opt/wheels holding torch-2.13.0+cpu, ~190 MB; TORCH_WHEEL=/path/to/file.whl also works),
#      that is installed with --no-deps plus torch's pure-Python deps.
#   2. Otherwise the PyPI CUDA build `torch==$TORCH_VERSION` is installed with all its deps (~3 GB of
#      nvidia-*/triton wheels; it runs fine on CPU, the CUDA libs are just dead weight).
# Environment: TORCH_VERSION (default 2.13.0), TRANSFORMERS_VERSION (default 5.23.0), TORCH_WHEEL, PYTHON.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TRANSFORMERS_VERSION="${TRANSFORMERS_VERSION:-5.23.0}"
PYTHON="${PYTHON:-python3}"
log() { echo "setup-torch: $*" >&2; }

check() {
    "$venv/bin/python" - "$TORCH_VERSION" "$TRANSFORMERS_VERSION" <<'EOF' 2>/dev/null
import sys
import torch, transformers
want_torch, want_tf = sys.argv[1], sys.argv[2]
assert torch.__version__.split("+")[0] == want_torch, torch.__version__
assert transformers.__version__ == want_tf, transformers.__version__
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: F401
print(f"torch {torch.__version__} transformers {transformers.__version__} "
      f"mkldnn={torch.backends.mkldnn.is_available()} mkl={torch.backends.mkl.is_available()}")
EOF
}

if [[ -x "$venv/bin/python" ]] && summary="$(check)"; then
    log "bench/.venv already works: $summary"
    exit 0
fi

start=$(date +%s)
if [[ ! -x "$venv/bin/python" ]]; then
    log "creating $venv"
    "$PYTHON" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# torch's own runtime deps (pure Python), from its wheel metadata (torch 2.13/2.15: filelock,
# typing-extensions, setuptools, sympy (+mpmath), networkx, jinja2 (+MarkupSafe), fsspec), plus numpy,
# which torch.from_numpy/tensor.numpy() and transformers need.
torch_pure_deps=(filelock "typing-extensions>=4.10" "setuptools>=77.0.3" "sympy>=1.13.3" mpmath
                 "networkx>=2.5.1" jinja2 MarkupSafe "fsspec>=0.8.5" numpy)

cpu_spec=""
if [[ -n "${TORCH_WHEEL:-}" ]]; then
    cpu_spec="$TORCH_WHEEL"
elif "${pip[@]}" install -q --dry-run --no-deps --only-binary=:all: "torch==$TORCH_VERSION+cpu" >/dev/null 2>&1; then
    cpu_spec="torch==$TORCH_VERSION+cpu"
fi

if [[ -n "$cpu_spec" ]]; then
    log "installing CPU-only $cpu_spec (--no-deps) and torch's pure-Python deps"
    "${pip[@]}" install -q --no-deps --only-binary=:all: "$cpu_spec"
    "${pip[@]}" install -q "${torch_pure_deps[@]}"
else
    log "no CPU-only torch==$TORCH_VERSION+cpu wheel visible to pip; installing PyPI's torch==$TORCH_VERSION"
    log "  (the CUDA build: ~3 GB of nvidia-*/triton wheels, needed for it to import at all)"
    "${pip[@]}" install -q "torch==$TORCH_VERSION" "${torch_pure_deps[@]}"
fi

log "installing transformers==$TRANSFORMERS_VERSION and its deps"
"${pip[@]}" install -q "transformers==$TRANSFORMERS_VERSION"

if ! summary="$(check)"; then
    log "error: bench/.venv does not import torch $TORCH_VERSION + transformers $TRANSFORMERS_VERSION:"
    "$venv/bin/python" -c "import torch, transformers" >&2 || true
    exit 1
fi
"$venv/bin/python" -c "import torch; print(torch.__config__.parallel_info())" >&2
log "done in $(( $(date +%s) - start )) s: $summary; venv size $(du -sh "$venv" | cut -f1)"
