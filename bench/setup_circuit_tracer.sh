#!/usr/bin/env bash
# Creates bench/.venv-ct: circuit-tracer 0.5.0 (from PyPI) and the exact versions it is compared
# at, isolated from the project's own virtualenv (which has transformers 5.x). Idempotent: an
# existing, complete venv is kept. torchvision must never be installed (it would pull a CUDA
# build of torch of several GB): we install torch first (the CPU wheel), pin it with a
# constraints file, and check afterwards that torchvision is absent.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-ct"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then py="$cand"; break; fi
  done
fi
if [ -x "$venv/bin/python" ] && "$venv/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as md, sys
want = {"torch": "2.13.0", "transformers": "4.57.3", "transformer-lens": "3.2.1", "nnsight": "0.6.3",
        "huggingface-hub": "0.36.2", "tokenizers": "0.22.2", "circuit-tracer": "0.5.0"}
for name, v in want.items():
    if md.version(name).split("+")[0] != v:
        sys.exit(1)
try:
    md.version("torchvision"); sys.exit(1)
except md.PackageNotFoundError:
    pass
PY
then
  echo "bench/.venv-ct is already set up"; exit 0
fi
"$py" -m venv "$venv"
pip() {  # quiet pip; drops the notes about configured extra indexes that do not exist here
  "$venv/bin/python" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location .* is ignored" || true; }
}
pip install -q --upgrade pip
# The CPU wheel of torch first (on disk here; elsewhere PyPI's Linux wheel of 2.13.0 would be a CUDA
# build: then take the PyTorch CPU index).
pip install -q "torch==2.13.0" || pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
cons="$(mktemp)"
trap 'rm -f "$cons"' EXIT
# Pin the torch just installed (with its +cpu tag) so that nothing below replaces it.
"$venv/bin/python" -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > "$cons"
pip install -q -c "$cons" \
  "transformers==4.57.3" "transformer-lens==3.2.1" "nnsight==0.6.3" "huggingface-hub==0.36.2" \
  "tokenizers==0.22.2" "circuit-tracer==0.5.0" pyyaml
if "$venv/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then
  echo "error: torchvision got installed into $venv; remove it (pip uninstall torchvision)" >&2
  exit 1
fi
"$venv/bin/python" - <<'PY'
import importlib.metadata as m
import circuit_tracer, nnsight, torch, transformer_lens, transformers  # noqa: F401  (they import)
print("bench/.venv-ct ready:", ", ".join(f"{n} {m.version(n)}" for n in
      ("circuit-tracer", "torch", "transformers", "transformer-lens", "nnsight", "huggingface-hub", "tokenizers")))
PY
