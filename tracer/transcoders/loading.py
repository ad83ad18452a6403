"""Read and write transcoder sets in the published format (docs/design.md §5).

A set is a folder (or a Hugging Face repo, or a subfolder of one) with ``config.yaml`` and one
safetensors file per layer::

    model_kind: transcoder_set
    model_name: google/gemma-3-4b-it
    feature_input_hook: mlp.hook_in
    feature_output_hook: mlp.hook_out
    top_k: 48                          # TopK sets only
    layers: [0, 1, ..., 33]
    num_model_layers: 34
    transcoders: [layer_0.safetensors, ...]   # relative names or hf:// URIs

Per layer: ``W_enc [d_tc, d_model]``, ``W_dec [d_tc, d_model]``, ``b_enc [d_tc]``,
``b_dec [d_model]``, optional ``W_skip [d_model, d_model]`` and optional
``activation_function.threshold [d_tc]`` (JumpReLU).

Also read, for sets published for other tools: circuit-tracer's ``activation: topk`` + ``k``
config keys and its per-file ``k`` tensor; GemmaScope ``params.npz`` files (``W_enc`` stored
[d_model, d_tc], ``threshold``) and GemmaScope-2 safetensors (``w_enc``/``w_dec``/``threshold``/
``affine_skip_connection``). Those two are loaded eagerly (their layout does not allow reading
encoder or decoder rows lazily in our orientation).

References: ``None`` (the shipped toy set), a local folder or its config.yaml, ``org/name``,
``org/name@revision``, ``org/name/subfolder[@revision]``, ``hf://org/name[@revision][/subfolder]``
or ``hf://org/name/subfolder?revision=rev``. Hub files go through huggingface_hub's cache, so
``HF_HUB_OFFLINE=1`` works with whatever is cached.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tracer.files import atomic_path, atomic_write_text
from tracer.transcoders.activations import JumpReLU, ReLU, TopK
from tracer.transcoders.errors import TranscoderFormatError, TranscoderMismatchError
from tracer.transcoders.per_layer import LazyRows, PerLayerTranscoder
from tracer.transcoders.transcoder_set import TranscoderSet
from tracer.toy.shipped import default_transcoder_dir, shipped_toy_of, shipped_transcoders_dir, shipped_transcoders_name

CONFIG_NAME = "config.yaml"
REQUIRED = ("W_enc", "W_dec", "b_enc", "b_dec")
THRESHOLD_KEY = "activation_function.threshold"
_HUB_REF = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?(/[\w./-]+)*(@[\w.-]+)?$")


def default_transcoders_dir() -> Path:
    """The toy transcoder set shipped with the package (for the shipped toy VLM)."""
    return default_transcoder_dir()


# -- references --------------------------------------------------------------------------------

@dataclass(frozen=True)
class HubRef:
    repo_id: str
    subfolder: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        s = "hf://" + self.repo_id + (f"@{self.revision}" if self.revision else "")
        return s + (f"/{self.subfolder}" if self.subfolder else "")


def parse_hub_ref(ref: str) -> HubRef:
    """`org/name`, `org/name@rev`, `org/name/sub[@rev]`, `hf://org/name[@rev][/sub]`, `...?revision=rev`."""
    text = ref.strip()
    revision = None
    if text.startswith("hf://"):
        text = text[len("hf://"):]
    if "?" in text:
        text, query = text.split("?", 1)
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key == "revision" and value:
                revision = value
    parts = [p for p in text.split("/") if p]
    if len(parts) < 2:
        raise TranscoderFormatError(f"{ref!r} is neither a local folder nor a hub reference 'org/name'")
    name = parts[1]
    if "@" in name:
        name, revision = name.split("@", 1)
    rest = parts[2:]
    if rest and "@" in rest[-1]:
        rest[-1], revision = rest[-1].split("@", 1)
    return HubRef(f"{parts[0]}/{name}", "/".join(rest) or None, revision)


def parse_hf_file_uri(uri: str) -> tuple[HubRef, str]:
    """hf://org/name[@rev]/path/to/file[?revision=rev] -> (repo ref, file path in the repo)."""
    ref = parse_hub_ref(uri)
    if not ref.subfolder:
        raise TranscoderFormatError(f"{uri!r} names a repo but no file inside it")
    return HubRef(ref.repo_id, None, ref.revision), ref.subfolder


def _hub_download(ref: HubRef, filename: str, cache_dir: str | Path | None, what: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            repo_id=ref.repo_id, filename=filename, subfolder=ref.subfolder, revision=ref.revision,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
        )
    except Exception as exc:  # offline, missing file, no access, network ...
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        where = f"{ref.repo_id}" + (f"/{ref.subfolder}" if ref.subfolder else "") + (
            f" at revision {ref.revision}" if ref.revision else "")
        hint = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline else ""
        raise TranscoderFormatError(
            f"could not get {what} {filename!r} from the Hugging Face repo {where}{hint}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return Path(path)


class _Files:
    """Where a set's files are: a local folder or a hub repo (+ subfolder, revision)."""

    def __init__(self, folder: Path | None = None, hub: HubRef | None = None, cache_dir=None, original: str = ""):
        self.folder, self.hub, self.cache_dir, self.original = folder, hub, cache_dir, original

    @property
    def label(self) -> str:
        return str(self.folder) if self.folder is not None else str(self.hub)

    def config(self) -> Path:
        if self.folder is not None:
            path = self.folder / CONFIG_NAME
            if not path.is_file():
                layer_files = sorted(p.name for p in self.folder.glob("layer_*"))
                hint = f" (it has {', '.join(layer_files[:4])}{' ...' if len(layer_files) > 4 else ''})" if layer_files else ""
                raise TranscoderFormatError(f"{path}: missing; a transcoder set folder needs a {CONFIG_NAME}{hint}")
            return path
        try:
            return _hub_download(self.hub, CONFIG_NAME, self.cache_dir, "the config")
        except TranscoderFormatError as exc:
            if self.original and not self.original.startswith("hf://"):
                raise TranscoderFormatError(f"{exc} (and there is no local folder {self.original!r})") from exc
            raise

    def layer_file(self, name: str, layer: int) -> Path:
        if name.startswith("hf://"):
            ref, filename = parse_hf_file_uri(name)
            return _hub_download(ref, filename, self.cache_dir, f"layer {layer}'s file")
        if self.folder is not None:
            path = Path(name).expanduser()
            path = path if path.is_absolute() else self.folder / path
            if not path.is_file():
                raise TranscoderFormatError(
                    f"{path}: missing; config.yaml in {self.folder} lists it as the file of layer {layer}"
                )
            return path
        return _hub_download(self.hub, name, self.cache_dir, f"layer {layer}'s file")


def _locate(ref: str | Path | None, cache_dir) -> _Files:
    if ref is None:
        return _Files(folder=default_transcoders_dir())
    text = str(ref)
    shipped = shipped_transcoders_dir(text)  # "toy-plt", "toy-plt-llava", ...
    if shipped is not None:
        return _Files(folder=shipped, cache_dir=cache_dir)
    path = Path(text).expanduser()
    if path.is_file() and path.name.endswith((".yaml", ".yml")):
        return _Files(folder=path.parent, cache_dir=cache_dir)
    if path.is_dir():
        return _Files(folder=path.resolve(), cache_dir=cache_dir)
    if text.startswith("hf://") or (not text.startswith((".", "/", "~")) and _HUB_REF.match(text)):
        return _Files(hub=parse_hub_ref(text), cache_dir=cache_dir, original=text)
    raise TranscoderFormatError(f"{text}: no such folder (and not a hub reference like 'org/name')")


# -- config ------------------------------------------------------------------------------------

def read_config(path: Path) -> dict:
    import yaml

    try:
        config = yaml.safe_load(path.read_text())
    except Exception as exc:
        raise TranscoderFormatError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise TranscoderFormatError(f"{path}: expected a mapping of settings, got {type(config).__name__}")
    kind = config.get("model_kind", "transcoder_set")
    if kind == "cross_layer_transcoder":
        raise TranscoderFormatError(f"{path}: model_kind cross_layer_transcoder is not supported yet (per-layer sets only)")
    if kind != "transcoder_set":
        raise TranscoderFormatError(f"{path}: model_kind is {kind!r}, expected 'transcoder_set'")
    for key in ("feature_input_hook", "feature_output_hook"):
        if key not in config:
            raise TranscoderFormatError(f"{path}: missing {key!r} (where the transcoders read and write)")
    return config


def _layer_plan(config: dict, config_path: Path, files: _Files) -> list[tuple[int, str]]:
    """(model layer, file name or URI) for each transcoder."""
    names = config.get("transcoders")
    layers = config.get("layers")
    if names is not None and not isinstance(names, (list, tuple)):
        raise TranscoderFormatError(f"{config_path}: 'transcoders' must be a list of file names")
    if layers is not None:
        try:
            layers = [int(x) for x in layers]
        except (TypeError, ValueError):
            raise TranscoderFormatError(f"{config_path}: 'layers' must be a list of layer numbers") from None
        if len(set(layers)) != len(layers):
            raise TranscoderFormatError(f"{config_path}: 'layers' repeats a layer: {layers}")
    if names is not None:
        names = [str(n) for n in names]
        if layers is None:
            layers = list(range(len(names)))
        if len(layers) != len(names):
            raise TranscoderFormatError(
                f"{config_path}: 'layers' has {len(layers)} entries but 'transcoders' lists {len(names)} files"
            )
        return list(zip(layers, names))
    if layers is None and config.get("num_model_layers") is not None:
        layers = list(range(int(config["num_model_layers"])))
    if layers is None and files.folder is not None:
        found = sorted(int(m.group(1)) for p in files.folder.glob("layer_*.safetensors")
                       if (m := re.fullmatch(r"layer_(\d+)\.safetensors", p.name)))
        layers = found or None
    if not layers:
        raise TranscoderFormatError(f"{config_path}: lists no layers ('layers', 'transcoders' or 'num_model_layers')")
    return [(layer, f"layer_{layer}.safetensors") for layer in layers]


def _config_top_k(config: dict, config_path: Path) -> int | None:
    k = config.get("top_k")
    activation = str(config.get("activation") or "").lower()
    if k is None and activation in ("topk", "top_k", "relu_topk"):
        k = config.get("k")
        if k is None:
            raise TranscoderFormatError(f"{config_path}: activation is {activation!r} but no 'k' / 'top_k' is given")
    if k is None:
        return None
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise TranscoderFormatError(f"{config_path}: top_k must be an integer, got {k!r}") from None
    if k < 1:
        raise TranscoderFormatError(f"{config_path}: top_k must be >= 1, got {k}")
    return k


# -- one layer ---------------------------------------------------------------------------------

def _shape_error(path: Path, key: str, got, want, why: str) -> TranscoderFormatError:
    return TranscoderFormatError(f"{path}: {key} has shape {list(got)}, expected {list(want)} ({why})")


def _convert(t: torch.Tensor, dtype, device) -> torch.Tensor:
    return t.to(device=device, dtype=dtype or t.dtype)


def load_layer(path: str | Path, layer: int, *, top_k: int | None = None, activation: str | None = None,
               lazy_encoder: bool = False, lazy_decoder: bool = True, device="cpu",
               dtype: torch.dtype | None = None) -> PerLayerTranscoder:
    """One layer's transcoder from its file (safetensors in the published layout, or GemmaScope)."""
    path = Path(path)
    if path.suffix == ".npz":
        return _load_npz(path, layer, top_k, device, dtype)
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:
        raise TranscoderFormatError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    with handle as f:
        keys = set(f.keys())
        if {"w_enc", "w_dec"} <= keys and "W_enc" not in keys:
            tensors = {k: f.get_tensor(k) for k in keys}
            return _from_gemma_scope(path, layer, tensors, top_k, device, dtype, skip_key="affine_skip_connection")
        missing = [k for k in REQUIRED if k not in keys]
        if missing:
            raise TranscoderFormatError(
                f"{path}: missing tensor{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"(layer {layer}; the file has {', '.join(sorted(keys)) or 'no tensors'})"
            )
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        if len(shapes["b_enc"]) != 1:
            raise _shape_error(path, "b_enc", shapes["b_enc"], ["d_transcoder"], "one bias per feature")
        if len(shapes["b_dec"]) != 1:
            raise _shape_error(path, "b_dec", shapes["b_dec"], ["d_model"], "one bias per model dimension")
        d_tc, d_model = shapes["b_enc"][0], shapes["b_dec"][0]
        for key in ("W_enc", "W_dec"):
            if shapes[key] != (d_tc, d_model):
                raise _shape_error(path, key, shapes[key], (d_tc, d_model),
                                   f"[d_transcoder, d_model] from b_enc [{d_tc}] and b_dec [{d_model}]")
        if "W_skip" in keys and shapes["W_skip"] != (d_model, d_model):
            raise _shape_error(path, "W_skip", shapes["W_skip"], (d_model, d_model), "[d_model, d_model]")
        if THRESHOLD_KEY in keys and shapes[THRESHOLD_KEY] not in ((d_tc,), ()):
            raise _shape_error(path, THRESHOLD_KEY, shapes[THRESHOLD_KEY], (d_tc,), "one threshold per feature")
        for key in keys & {*REQUIRED, "W_skip", THRESHOLD_KEY}:
            stored = f.get_slice(key).get_dtype()
            if not any(stored.upper().startswith(p) for p in ("F", "BF")):
                raise TranscoderFormatError(f"{path}: {key} is stored as {stored}, expected a floating-point type")
        small = {k: f.get_tensor(k) for k in keys if k not in ("W_enc", "W_dec")}
        W_enc = None if lazy_encoder else f.get_tensor("W_enc")
        W_dec = None if lazy_decoder else f.get_tensor("W_dec")
        stored_dtype = small["b_enc"].dtype
    dt = dtype or stored_dtype
    if W_enc is None:
        W_enc = LazyRows(path, "W_enc", (d_tc, d_model), dt, device)
    else:
        W_enc = _convert(W_enc, dt, device)
    if W_dec is None:
        W_dec = LazyRows(path, "W_dec", (d_tc, d_model), dt, device)
    else:
        W_dec = _convert(W_dec, dt, device)
    if top_k is None and "k" in small:
        top_k = int(small["k"].reshape(-1)[0])
    act = _make_activation(path, small.get(THRESHOLD_KEY), top_k, activation, d_tc, dt, device)
    W_skip = _convert(small["W_skip"], dt, device) if "W_skip" in small else None
    return PerLayerTranscoder(layer, W_enc, _convert(small["b_enc"], dt, device), W_dec,
                              _convert(small["b_dec"], dt, device), act, W_skip, source=str(path))


def _make_activation(path: Path, threshold, top_k, activation, d_tc, dtype, device):
    if threshold is not None and top_k is not None:
        raise TranscoderFormatError(f"{path}: has a JumpReLU threshold but the config asks for TopK({top_k})")
    if threshold is not None:
        thr = _convert(threshold, dtype, device)
        return JumpReLU(thr.expand(d_tc).clone() if thr.dim() == 0 else thr)
    if top_k is not None:
        return TopK(top_k)
    if activation and str(activation).lower() in ("jumprelu", "jump_relu"):
        raise TranscoderFormatError(f"{path}: the config says JumpReLU but the file has no {THRESHOLD_KEY}")
    return ReLU()


def _from_gemma_scope(path, layer, tensors, top_k, device, dtype, skip_key=None) -> PerLayerTranscoder:
    """GemmaScope layouts: encoder stored [d_model, d_tc], threshold under 'threshold'."""
    get = {k.lower(): v for k, v in tensors.items()}
    for key in ("w_enc", "w_dec", "b_enc", "b_dec"):
        if key not in get:
            raise TranscoderFormatError(f"{path}: missing tensor {key} (GemmaScope layout; has {', '.join(sorted(tensors))})")
    d_tc, d_model = get["b_enc"].shape[0], get["b_dec"].shape[0]
    W_enc = get["w_enc"]
    if tuple(W_enc.shape) != (d_model, d_tc):
        raise _shape_error(path, "W_enc", W_enc.shape, (d_model, d_tc), "GemmaScope stores [d_model, d_transcoder]")
    if tuple(get["w_dec"].shape) != (d_tc, d_model):
        raise _shape_error(path, "W_dec", get["w_dec"].shape, (d_tc, d_model), "[d_transcoder, d_model]")
    dt = dtype or get["b_enc"].dtype
    W_skip = None
    if skip_key and skip_key in get:
        W_skip = _convert(get[skip_key].T.contiguous(), dt, device)  # stored [in, out]
    act = _make_activation(path, get.get("threshold"), top_k, None, d_tc, dt, device)
    return PerLayerTranscoder(layer, _convert(W_enc.T.contiguous(), dt, device), _convert(get["b_enc"], dt, device),
                              _convert(get["w_dec"], dt, device), _convert(get["b_dec"], dt, device), act, W_skip,
                              source=str(path))


def _load_npz(path: Path, layer: int, top_k, device, dtype) -> PerLayerTranscoder:
    import numpy as np

    try:
        with np.load(path) as data:
            tensors = {k: torch.from_numpy(np.asarray(data[k], dtype=np.float32)) for k in data.files}
    except Exception as exc:
        raise TranscoderFormatError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    return _from_gemma_scope(path, layer, tensors, top_k, device, dtype or torch.float32)


# -- a whole set -------------------------------------------------------------------------------

def load_transcoder_set(ref: str | Path | None = None, *, lazy_decoder: bool = True, lazy_encoder: bool = False,
                        device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                        layers: list[int] | None = None, model=None, cache_dir: str | Path | None = None
                        ) -> TranscoderSet:
    """Load a transcoder set.

    ref: None (the shipped toy set; with `model` a shipped toy, that toy's set), a local folder (or its config.yaml), or a hub reference
    (`org/name`, `org/name@rev`, `org/name/subfolder`, `hf://org/name[@rev][/subfolder]`).
    lazy_decoder / lazy_encoder: keep W_dec / W_enc in their files and read rows on demand.
    dtype: None keeps the stored dtype (bf16 for the published Gemma3 set).
    layers: load only these model layers. model: a model or adapter to check the set against
    (raises TranscoderMismatchError). cache_dir: the huggingface_hub cache to use.
    """
    if ref is None and model is not None:  # a shipped toy's own set (the Gemma3 toy's otherwise)
        ref = shipped_transcoders_name(shipped_toy_of(model) or "")
    files = _locate(ref, cache_dir)
    config_path = files.config()
    config = read_config(config_path)
    plan = _layer_plan(config, config_path, files)
    if layers is not None:
        wanted = {int(x) for x in layers}
        unknown = wanted - {layer for layer, _ in plan}
        if unknown:
            raise TranscoderFormatError(f"{config_path}: no transcoder for requested layers {sorted(unknown)}")
        plan = [(layer, name) for layer, name in plan if layer in wanted]
    top_k = _config_top_k(config, config_path)
    transcoders: dict[int, PerLayerTranscoder] = {}
    d_model_seen: tuple[int, str] | None = None
    for layer, name in plan:
        path = files.layer_file(name, layer)
        tc = load_layer(path, layer, top_k=top_k, activation=config.get("activation"), lazy_encoder=lazy_encoder,
                        lazy_decoder=lazy_decoder, device=device, dtype=dtype)
        if d_model_seen is None:
            d_model_seen = (tc.d_model, str(path))
        elif tc.d_model != d_model_seen[0]:
            raise TranscoderFormatError(
                f"{path}: d_model is {tc.d_model} but {d_model_seen[1]} has d_model {d_model_seen[0]}"
            )
        if config.get("d_model") is not None and int(config["d_model"]) != tc.d_model:
            raise TranscoderFormatError(f"{path}: d_model is {tc.d_model} but {config_path} says d_model {config['d_model']}")
        transcoders[layer] = tc
    config = dict(config)
    if files.hub is not None:
        config["hub"] = {"repo_id": files.hub.repo_id, "revision": files.hub.revision,
                         "subfolder": files.hub.subfolder}
    tset = TranscoderSet(transcoders, config=config, source=files.label)
    if model is not None:
        tset.check_compatible(model)
    return tset


# -- writing -----------------------------------------------------------------------------------

_SECRET_KEY = re.compile(
    r"(^|[_-])(token|secret|password|passwd|apikey|api_key|auth|authorization|credential|credentials|cookie)$", re.I
)
_SECRET_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b|\bapi_[A-Za-z0-9]{20,}\b")
_NOT_WRITTEN = {"hub", "source", "transcoders", "layers", "top_k", "k", "activation"}


def scrub_secrets(value: Any) -> Any:
    """Drop keys that name secrets and strings that look like access tokens."""
    if isinstance(value, dict):
        return {k: scrub_secrets(v) for k, v in value.items()
                if not _SECRET_KEY.search(str(k)) and not (isinstance(v, str) and _SECRET_VALUE.search(v))}
    if isinstance(value, (list, tuple)):
        return [scrub_secrets(v) for v in value if not (isinstance(v, str) and _SECRET_VALUE.search(v))]
    return value


def _plain(value: Any) -> Any:
    """YAML-safe plain Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def save_transcoder_set(tset: TranscoderSet, folder: str | Path, model_name: str | None = None, *,
                        dtype: torch.dtype | None = None, num_model_layers: int | None = None,
                        extra: dict | None = None) -> Path:
    """Write `tset` as config.yaml + layer_{i}.safetensors (the published layout). Returns the folder.

    dtype: store tensors in this dtype (default: as they are). Keys that name secrets and values
    that look like tokens are never written.
    """
    import yaml
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for tc in tset:
        tensors = {k: v.detach().to("cpu", dtype=dtype or v.dtype).contiguous() for k, v in tc.tensors().items()}
        name = f"layer_{tc.layer}.safetensors"
        with atomic_path(folder / name) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        names.append(name)
    first = next(iter(tset))
    config: dict[str, Any] = {
        "model_kind": "transcoder_set",
        "model_name": model_name or tset.config.get("model_name") or "unknown",
        "feature_input_hook": tset.feature_input_hook,
        "feature_output_hook": tset.feature_output_hook,
    }
    if isinstance(first.activation, TopK):
        config["top_k"] = first.activation.k
    config["layers"] = tset.layers
    n_model = num_model_layers or tset.num_model_layers
    if n_model is not None:
        config["num_model_layers"] = int(n_model)
    config["transcoders"] = names
    config["d_model"] = tset.d_model
    config["d_transcoder"] = tset.d_transcoder
    for key, value in tset.config.items():
        if key not in config and key not in _NOT_WRITTEN:
            config[key] = value
    for key, value in (extra or {}).items():
        config[key] = value
    config = scrub_secrets(_plain(config))
    atomic_write_text(folder / CONFIG_NAME, yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100))
    return folder


__all__ = [
    "HubRef", "TranscoderFormatError", "TranscoderMismatchError", "default_transcoders_dir", "load_layer",
    "load_transcoder_set", "parse_hub_ref", "read_config", "save_transcoder_set", "scrub_secrets",
]
