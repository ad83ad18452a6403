#!/usr/bin/env bash
# Creates bench/.venv-uiuc: the UIUC "vlm-circuit-tracing" tool (github UIUC-MONET/vlm-circuit-tracing,
# CVPR 2026 Findings) with its bundled TransformerLens fork (HookedVLTransformer), isolated from the
# project's own virtualenv, for bench/compare_uiuc.py.
#
#   bash bench/setup_uiuc.sh [SOURCE]          # or UIUC_SRC=SOURCE bash bench/setup_uiuc.sh
#
# SOURCE: a work tree or a (bare) git directory of the repository, or a git URL; default
# https://github.com/UIUC-MONET/vlm-circuit-tracing. It is cloned into bench/.venv-uiuc/src at the
# commit we compare against (UIUC_COMMIT, default below; UIUC_COMMIT=HEAD takes the source's newest)
# and both of its packages are installed from there (not editable), so the venv is self-contained.
#
# Versions: torch 2.13.0 (the CPU wheel, installed first and then pinned), transformers 4.57.3 (the
# fork's Gemma3 weight conversion needs the transformers 4.5x module layout: language_model.layers,
# rotary_emb_local; transformers 5 has neither), tokenizers 0.22.2, huggingface-hub 0.36.2, and the
# other dependencies pinned at the versions this was tested with. torchvision must never be
# installed (it would pull a CUDA build of torch of several GB): checked at the end.
#
# Idempotent: an existing venv with these versions and this commit is kept as it is. The venv holds a
# .gitignore of its own ("*"), so git ignores it even where the repository's .gitignore does not.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-uiuc"
src_arg="${1:-${UIUC_SRC:-https://github.com/UIUC-MONET/vlm-circuit-tracing}}"
# the commit compared against: 2026-08-18, "Load published activation statistics in frontend"
commit="${UIUC_COMMIT:-6927944a93f5c617947494ad0f21b094a4c92a94}"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then py="$cand"; break; fi
  done
fi
# The versions the comparison was run with (torch apart: installed on its own first). The fork's
# pyproject leaves out three packages its __init__ imports (better-abc, typeguard, wandb); they are
# added here. Everything else is what pip resolved for the two packages, pinned.
pins=(transformers==4.57.3 tokenizers==0.22.2 huggingface-hub==0.36.2 better-abc==0.0.3 typeguard==4.6.1 wandb==0.31.0)
constraints=(
  accelerate==1.16.0 aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0
  annotated-types==0.8.0 anyio==4.16.0 asttokens==3.0.2 attrs==26.1.0 beartype==0.23.1
  better-abc==0.0.3 certifi==2026.10.19.post1 charset-normalizer==3.5.3 click==8.5.1 comm==0.2.3
  cwevals==0.0.1b1 datasets==5.0.1 debugpy==1.8.22 dill==0.4.1 distro==1.9.0 einops==0.8.2
  executing==2.3.0 fancy-einsum==0.0.3 filelock==4.3.2 frozenlist==1.8.0 fsspec==2026.6.0
  googleapis-common-protos==1.76.0 h11==0.16.0 hf-xet==1.8.0 httpcore==1.0.9 httpx==0.29.0
  huggingface_hub==0.36.2 idna==3.21 ipykernel==6.31.0 ipython==9.19.1
  ipython_pygments_lexers==1.1.1 ipywidgets==8.1.9 jaxtyping==0.3.11 jedi==0.20.1 Jinja2==3.1.6
  jupyterlab_widgets==3.0.17 jupyter_client==8.10.0 jupyter_core==5.9.1 markdown-it-py==4.3.0
  MarkupSafe==3.0.4 matplotlib-inline==0.2.2 mdurl==0.1.2 mpmath==1.3.0 multidict==7.2.1
  multiprocess==0.70.19 nest-asyncio==1.6.0 networkx==3.6.1 numpy==2.4.6 opentelemetry-api==1.45.2
  opentelemetry-exporter-http-transport==0.66b2 opentelemetry-exporter-otlp-common==0.66b2
  opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2
  opentelemetry-proto==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
  packaging==26.4 pandas==3.1.1 parso==0.8.7 pexpect==4.9.0 pillow==13.0.0 platformdirs==4.14.9
  prompt_toolkit==3.0.53 propcache==0.5.4 protobuf==7.36.2 psutil==7.2.2 ptyprocess==0.7.0
  pure_eval==0.2.4 pyarrow==26.0.1 pydantic==2.14.4 pydantic_core==2.50.5 Pygments==2.21.0
  python-dateutil==4.0.0 PyYAML==6.0.4 pyzmq==27.3.0 regex==2026.12.2 requests==2.34.2 rich==15.0.0
  safetensors==0.8.0 sentencepiece==0.2.3 sniffio==1.3.1 stack-data==0.6.3 sympy==1.14.0
  tokenizers==0.22.2 tornado==6.6.1 tqdm==4.70.1 traitlets==5.16.1 transformers==4.57.3
  typeguard==4.6.1 typing-inspection==0.4.5 typing_extensions==4.16.0 tzdata==2026.6 urllib3==2.8.0
  wadler_lindig==0.1.8 wandb==0.31.0 wcwidth==0.9.5 widgetsnbextension==4.0.16 xxhash==4.1.0
  yarl==1.25.1
)

want_commit() {  # the commit the venv should hold: a full hash stays as it is
  if [[ "$commit" =~ ^[0-9a-f]{40}$ ]]; then echo "$commit"; else echo ""; fi
}
if [ -x "$venv/bin/python" ] && [ -f "$venv/uiuc-commit" ] && \
   { [ -z "$(want_commit)" ] || [ "$(cat "$venv/uiuc-commit")" = "$(want_commit)" ]; } && \
   PINS="${pins[*]}" "$venv/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as md, os, sys
want = dict(p.split("==") for p in os.environ["PINS"].split())
want["torch"] = "2.13.0"
for name, v in want.items():
    if md.version(name).split("+")[0] != v:
        sys.exit(1)
if md.version("transformer-lens") != "2.16.0+vlm.0" or md.version("circuit-tracer") != "0.1.0":
    sys.exit(1)
try:
    md.version("torchvision"); sys.exit(1)
except md.PackageNotFoundError:
    pass
import circuit_tracer.attribution.attribute, transformer_lens.HookedVLTransformer  # noqa: F401,E401
PY
then
  echo "bench/.venv-uiuc is already set up (vlm-circuit-tracing $(cat "$venv/uiuc-commit"))"; exit 0
fi

"$py" -m venv "$venv"
printf '# created by bench/setup_uiuc.sh: keep this virtualenv out of git\n*\n' > "$venv/.gitignore"
pip() {  # quiet pip; drops the notes about configured extra indexes that do not exist here
  "$venv/bin/python" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location .* is ignored" || true; }
}
pip install -q --upgrade pip

# The source, at the pinned commit.
src="$venv/src/vlm-circuit-tracing"
rm -rf "$src"
mkdir -p "$venv/src"
git clone -q --no-checkout "$src_arg" "$src"
if ! git -C "$src" checkout -q "$commit" 2>/dev/null; then
  echo "error: commit $commit is not in $src_arg (set UIUC_COMMIT=HEAD to take its newest)" >&2
  exit 1
fi
for d in third_party/TransformerLens circuit_tracer_vlm; do
  [ -f "$src/$d/pyproject.toml" ] || { echo "error: $src_arg has no $d/pyproject.toml" >&2; exit 1; }
done

# The CPU wheel of torch first (on disk here; elsewhere PyPI's Linux wheel of 2.13.0 would be a CUDA
# build: then take the PyTorch CPU index).
pip install -q "torch==2.13.0" || pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
cons="$(mktemp)"
trap 'rm -f "$cons"' EXIT
# Pin the torch just installed (with its +cpu tag) so that nothing below replaces it.
"$venv/bin/python" -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > "$cons"
printf '%s\n' "${constraints[@]}" >> "$cons"
pip install -q -c "$cons" "${pins[@]}"
# Their TransformerLens fork (HookedVLTransformer), then their package; -c keeps every pin above.
pip install -q -c "$cons" "$src/third_party/TransformerLens" "$src/circuit_tracer_vlm"
# again without dependencies, so that a venv made from another commit (same version numbers) gets this one
pip install -q --no-deps --force-reinstall "$src/third_party/TransformerLens" "$src/circuit_tracer_vlm"
git -C "$src" rev-parse HEAD > "$venv/uiuc-commit"

if "$venv/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then
  echo "error: torchvision got installed into $venv; remove it (pip uninstall torchvision)" >&2
  exit 1
fi
"$venv/bin/python" - <<'PY'
import importlib.metadata as m
import circuit_tracer.attribution.attribute, circuit_tracer.replacement_model  # noqa: F401,E401
import torch, transformer_lens, transformers  # noqa: F401,E401  (they import)
from transformer_lens import HookedVLTransformer  # noqa: F401
print("bench/.venv-uiuc ready:", ", ".join(f"{n} {m.version(n)}" for n in
      ("circuit-tracer", "transformer-lens", "torch", "transformers", "tokenizers", "huggingface-hub")))
PY
echo "vlm-circuit-tracing commit: $(cat "$venv/uiuc-commit")"
