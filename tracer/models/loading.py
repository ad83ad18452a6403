"""Load a VLM and its processor from a Hugging Face id or a local folder."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from tracer.errors import InputError
from tracer.models.gguf import is_gguf_ref, model_folder


def resolve_model_ref(ref: str | Path | None) -> str:
    """None (or "toy") means the shipped toy VLM, "toy-llava" the LLaVA one (tracer.toy.shipped);
    anything else is a local folder or a hub id."""
    from tracer.toy.shipped import shipped_model_dir

    shipped = shipped_model_dir("toy" if ref is None else str(ref))
    return str(shipped) if shipped is not None else str(ref)


class ModelLoadError(InputError):
    """A model reference that names no usable model (no such folder, not on the hub or offline)."""


def _looks_local(ref: str) -> bool:
    """Paths, not hub ids: hub ids are 'name' or 'org/name'."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref


def check_model_folder(folder: str | Path) -> None:
    """ModelLoadError (one line) for a folder that cannot hold a loadable model: not a folder, no
    config.json, no weights, or a weights file that is truncated or whose header lies about its
    sizes (checked from the header alone, before anything is allocated)."""
    from tracer.files import read_safetensors_header
    from tracer.limits import check_host_allocation

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: not a folder (a model is a folder with config.json and weights)")
    if not (folder / "config.json").is_file():
        what = "is empty" if not any(folder.iterdir()) else "has no config.json"
        raise ModelLoadError(f"{folder}: {what}: not a model folder")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{folder}: config.json is not readable JSON ({_first_line(err)})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{folder}: config.json must hold a JSON object")
    if "auto_map" in config:  # checked here too, before transformers sees the folder
        raise ModelLoadError(f"{folder} contains custom code (auto_map in config.json), which vlm-circuits never "
                             f"runs: use a model of a supported family")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not any(folder.glob("*.bin")):
        raise ModelLoadError(f"{folder}: no weights (model.safetensors) in the model folder")
    total = 0
    for w in weights:
        try:
            tensors, _ = read_safetensors_header(w)
        except InputError as err:
            raise ModelLoadError(str(err)) from None
        total += sum(nbytes for _, _, nbytes in tensors.values())
    try:
        check_host_allocation(total, f"{folder}: loading this model")
    except InputError as err:
        raise ModelLoadError(str(err)) from None


# Attention for work that reads no attention pattern (transcoder training and reports, feature
# examples): eager attention materialises every pattern in fp32, 32 GB for a batch of 32
# 896 px images in Gemma3-4B's vision tower.
FAST_ATTENTION = "sdpa"


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(err).__name__


@contextmanager
def hub_offline():
    """No Hugging Face hub requests inside (the local cache still answers): for names read from a
    file, which must not make tracer contact a hub unless the user names them."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def check_device(device: str | torch.device) -> torch.device:
    """The torch device, or a ModelLoadError for one this build of torch cannot use ('tpu', 'cuda'
    without CUDA, 'cuda:3' on a machine with two GPUs)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r}: this torch build has no CUDA or no GPU is visible; "
                                 "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"device {device!r}: tracer runs on cpu, cuda or mps")
    return dev


def _load_error(path: str, err: Exception, local_only: bool) -> ModelLoadError:
    hint = (f" (a name read from a file is only looked up locally; pass --model {path} to fetch it)"
            if local_only and not _looks_local(path) else "")
    return ModelLoadError(f"cannot load model {path!r}: {_first_line(err)}{hint}")


def _adapter_class(path: str, options: dict):
    """The adapter class for the model at `path` (folder or hub id), read from its config.json
    before any weights load: an unsupported family is refused in one line naming the supported ones."""
    from tracer.models.registry import adapter_class_for_config

    folder = Path(path)
    if folder.is_dir():
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    else:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(path, **options).to_dict()
        except Exception as err:  # noqa: BLE001 - offline without a cached copy, no such repo: one line
            raise _load_error(path, err, options["local_files_only"]) from err
    try:
        return adapter_class_for_config(config)
    except InputError as err:
        raise ModelLoadError(f"{path}: {err}") from None


def load_vlm(ref: str | Path | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
             attn_implementation: str = "eager", local_only: bool = False):
    """(model, processor) in eval mode. Eager attention by default, so that patterns can be
    recorded (attribution, interventions); FAST_ATTENTION where none is read.

    Never runs code shipped with a model (trust_remote_code=False). local_only: the reference came
    from a file, not from the user: a local folder or the local Hugging Face cache, never the hub."""
    check_device(device)
    path = resolve_model_ref(ref)
    if is_gguf_ref(path):  # real weights shipped as GGUF: dequantised once into a cached folder
        path = str(model_folder(path))
    if Path(path).expanduser().exists():
        path = str(Path(path).expanduser())
        check_model_folder(path)
    elif _looks_local(path):
        raise ModelLoadError(f"{path}: no such folder (and not a Hugging Face model id like 'google/gemma-3-4b-it')")
    options = dict(trust_remote_code=False, local_files_only=local_only)
    adapter_class = _adapter_class(path, options)
    try:
        model = adapter_class.load_model(path, dtype=dtype, attn_implementation=attn_implementation, **options)
        processor = adapter_class.load_processor(path, **options)
    except MemoryError as err:
        raise ModelLoadError(f"cannot load model {path!r}: not enough memory") from err
    except OSError as err:  # not on the hub, no network, HF_HUB_OFFLINE=1 without a cached copy, no weights
        raise _load_error(path, err, local_only) from err
    except Exception as err:  # noqa: BLE001 - custom code (refused), broken config or truncated weights: one line
        raise ModelLoadError(f"cannot load model {path!r}: {_first_line(err)}") from err
    model.to(device).eval()
    return model, processor
