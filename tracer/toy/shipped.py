"""The trained toys shipped with the package, by name (light: no torch or transformers, so that
the app's command line can resolve names before loading anything)."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # tracer/data
# The trained toys shipped with the package: name -> (model folder, transcoder set folder) under
# tracer/data. `--model toy-llava` picks the LLaVA toy (`toy-qwen` the Qwen2.5-VL one), and its
# own transcoder set when --transcoders is not given; "toy" is the Gemma3 toy (the default).
SHIPPED_TOYS = {
    "toy": ("toy-vlm", "toy-plt"),
    "toy-llava": ("toy-vlm-llava", "toy-plt-llava"),
    "toy-qwen": ("toy-vlm-qwen", "toy-plt-qwen"),
}


def default_model_dir() -> Path:
    """The shipped, trained toy VLM."""
    return DATA_DIR / SHIPPED_TOYS["toy"][0]


def shipped_model_dir(name: str) -> Path | None:
    """The folder of a shipped toy named `name` ("toy", "toy-llava", ...), else None."""
    entry = SHIPPED_TOYS.get(str(name))
    return DATA_DIR / entry[0] if entry else None


def shipped_transcoders_name(model_name: str) -> str | None:
    """The transcoder set shipped with the toy named `model_name` ("toy" -> "toy-plt"), else None."""
    entry = SHIPPED_TOYS.get(str(model_name))
    return entry[1] if entry else None


def shipped_toy_of(model) -> str | None:
    """The shipped toy name of a loaded model (or adapter) read from its folder, else None."""
    model = getattr(model, "model", model)  # an adapter holds the model
    folder = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    try:
        here = Path(folder).resolve()
    except (OSError, ValueError):
        return None
    for name, (model_folder, _) in SHIPPED_TOYS.items():
        if here == (DATA_DIR / model_folder).resolve():
            return name
    return None


def shipped_transcoders_dir(name: str) -> Path | None:
    """The folder of a shipped transcoder set named `name` ("toy-plt", "toy-plt-llava", ...)."""
    names = {plt for _, plt in SHIPPED_TOYS.values()}
    return DATA_DIR / name if str(name) in names else None


def default_transcoder_dir() -> Path:
    """The shipped transcoder set of the toy VLM."""
    return DATA_DIR / SHIPPED_TOYS["toy"][1]
