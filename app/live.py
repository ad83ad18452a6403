"""The live side of the app: the model it traces and steers with, loaded lazily in the worker
thread; uploaded images; what the jobs leave behind (vision maps, replacement models).

Nothing here imports torch or transformers at import time: the model is loaded by the first
job that needs it, inside the device's worker thread (app/jobs.py), never when the app starts
(Dash debug mode imports the app twice).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tracer.graph.graph import ATTENTION_GRAPH

from app.jobs import ACTIVE, JobQueue

TOY_MODEL, TOY_TRANSCODERS = "toy", "toy-plt"
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# job kinds, one status store each in the page (app/panels/live.py)
KINDS = ("trace", "steer", "region", "attention", "vision", "heads")


class LiveError(ValueError):
    """A request the live features cannot serve (message written for the browser)."""


@dataclass
class LiveConfig:
    """Which model the live features use. model=None: the shipped toy VLM and its transcoders."""

    model: str | None = None
    transcoders: str | None = None
    device: str | None = None  # None: cuda if available, else cpu (decided in the worker)
    dtype: str | None = None  # None: float32

    @property
    def model_ref(self) -> str:
        return TOY_MODEL if self.model in (None, "", TOY_MODEL) else str(self.model)

    @property
    def transcoders_ref(self) -> str:
        """The transcoders given, else a shipped toy's own set ("toy-plt" for "toy"), else ""."""
        from tracer.toy.shipped import shipped_transcoders_name

        if self.transcoders in (None, ""):
            return shipped_transcoders_name(self.model_ref) or ""
        return str(self.transcoders)

    @property
    def is_toy(self) -> bool:
        return self.model_ref == TOY_MODEL

    @property
    def device_key(self) -> str:
        """The queue a job goes to: one worker per device."""
        return self.device or "auto"

    def defaults(self) -> dict:
        """Attribution settings the form starts with (the toy model: small and quick)."""
        if self.is_toy:
            return {"max_feature_nodes": 400, "max_n_logits": 10, "desired_logit_prob": 0.95, "batch_size": 128}
        return {"max_feature_nodes": 7500, "max_n_logits": 10, "desired_logit_prob": 0.95, "batch_size": 256}

    def describe(self) -> str:
        text = f"model {self.model_ref}"
        if self.transcoders_ref:
            text += f", transcoders {self.transcoders_ref}"
        return text + f" on {self.device or 'auto'}" + (f" ({self.dtype})" if self.dtype else "")


def _default_factory(config: LiveConfig):
    from tracer.session import TracingSession

    if not config.transcoders_ref:
        raise LiveError(f"--model {config.model} needs --transcoders (the transcoder set of that model)")
    return TracingSession(None if config.is_toy else config.model, config.transcoders or None,
                          device=config.device, dtype=config.dtype)


class LiveModel:
    """The TracingSession, created by the first job that asks for it (in the worker thread)."""

    def __init__(self, config: LiveConfig, factory: Callable[[LiveConfig], Any] | None = None):
        self.config = config
        self._factory = factory or _default_factory
        self._session = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def session(self, ctx=None):
        with self._lock:
            if self._session is None:
                if ctx is not None:
                    ctx.progress(f"loading {self.config.model_ref}", 0, 1)
                try:
                    self._session = self._factory(self.config)
                except LiveError:
                    raise
                except Exception as err:  # a missing model, no network, a bad path: say so
                    raise LiveError(f"cannot load {self.config.describe()}: {type(err).__name__}: {err}") from err
            return self._session


# ---------------------------------------------------------------------- uploads
@dataclass
class Upload:
    data: bytes
    name: str
    width: int
    height: int
    format: str


def decode_upload(contents: str | None, filename: str | None = None) -> Upload:
    """Validate what dcc.Upload sent (a base64 data URI): PNG / JPEG / WebP only, decodable,
    within tracer.images' size and pixel-count limits. LiveError with a clear message otherwise."""
    from PIL import Image

    from tracer.images import ImageError, open_image

    name = Path(str(filename or "upload")).name[:120] or "upload"
    if not isinstance(contents, str) or "," not in contents:
        raise LiveError(f"{name}: the upload is empty or not a file")
    if len(contents) > MAX_UPLOAD_BYTES * 4 // 3 + 200:
        raise LiveError(f"{name}: the file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
    try:
        data = base64.b64decode(contents.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise LiveError(f"{name}: the upload could not be decoded") from None
    if not data:
        raise LiveError(f"{name}: the file is empty")
    fmt = None
    try:
        with warnings.catch_warnings():  # a bomb's warning must not leak: open_image below refuses it
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                fmt = probe.format
    except Exception:  # noqa: BLE001: open_image below says what is wrong
        pass
    if fmt is not None and fmt not in UPLOAD_FORMATS:
        raise LiveError(f"{name}: {fmt} images are not accepted; upload a PNG, JPEG or WebP image")
    try:
        image = open_image(data)
    except ImageError as err:
        raise LiveError(str(err).replace("the uploaded image", name)) from None
    return Upload(data, name, image.width, image.height, fmt or "?")


def png_bytes(array) -> bytes:
    """A uint8 image array (as graphs store images) as PNG bytes."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def thumbnail_uri(data: bytes, size: int = 160) -> str:
    import numpy as np
    from PIL import Image

    from tracer.graph.neuronpedia import image_to_data_uri
    from tracer.images import open_image

    image = open_image(data)
    image.thumbnail((size, size), Image.Resampling.NEAREST if max(image.size) <= size else Image.Resampling.LANCZOS)
    if max(image.size) < 96:  # tiny toy images: scale up crisply
        factor = max(1, 96 // max(image.size))
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    return image_to_data_uri(np.asarray(image))


class Uploads:
    """Validated uploads kept on the server; the browser keeps only a token."""

    def __init__(self, keep: int = 64):
        self.keep = keep
        self._items: OrderedDict[str, Upload] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, upload: Upload) -> str:
        import uuid

        token = uuid.uuid4().hex
        with self._lock:
            self._items[token] = upload
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        return token

    def get(self, token: str | None) -> Upload | None:
        with self._lock:
            return self._items.get(token) if isinstance(token, str) else None


# ---------------------------------------------------------------------- file names
_NAME_LOCK = threading.Lock()
SUFFIX = ".graph.safetensors"


def slugify(text: str, limit: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", str(text or "").lower()).strip("-")
    return slug[:limit].rstrip("-") or "trace"


def save_unique(graph, folder: Path, stem: str) -> str:
    """Save into folder as <stem>.graph.safetensors, or <stem>-2... if taken; the file name."""
    from tracer.graph import save_graph

    stem = slugify(stem, 64)
    folder = Path(folder)
    with _NAME_LOCK:
        for k in range(1, 10_000):
            name = f"{stem}{'' if k == 1 else f'-{k}'}{SUFFIX}"
            path = folder / name
            if not path.exists() and not path.is_symlink():
                try:
                    save_graph(graph, path)
                except OSError as err:
                    raise LiveError(f"cannot save the graph into {folder}: {err}") from err
                return name
    raise LiveError(f"no free file name for {stem} in {folder}")


# ---------------------------------------------------------------------- state
class LiveState:
    """Everything the live callbacks share: the queue, the model, uploads, caches."""

    def __init__(self, config: LiveConfig, graphs_dir: str | Path, queue: JobQueue | None = None,
                 factory: Callable[[LiveConfig], Any] | None = None):
        self.config = config
        self.graphs_dir = Path(graphs_dir)
        self.queue = queue or JobQueue()
        self.model = LiveModel(config, factory)
        self.uploads = Uploads()
        self._cache: OrderedDict = OrderedDict()  # (what, graph identity) -> object
        self._cache_lock = threading.Lock()
        self._pending: dict = {}  # (what, graph identity) -> job id in flight

    def submit(self, kind: str, fn, label: str = "", meta: dict | None = None) -> str:
        return self.queue.submit(kind, fn, device=self.config.device_key, label=label, meta=meta)

    # small bounded cache for vision maps and replacement models (per graph file version)
    def cached(self, key):
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        return None

    def remember(self, key, value, keep: int = 6) -> None:
        with self._cache_lock:
            self._cache[key] = value
            self._cache.move_to_end(key)
            kinds = [k for k in self._cache if k[0] == key[0]]
            for old in kinds[: max(0, len(kinds) - keep)]:
                del self._cache[old]

    def pending(self, key) -> str | None:
        """The job in flight that computes `key`, if any (so one selection does not queue twice)."""
        job_id = self._pending.get(key)
        st = self.queue.status(job_id) if job_id else None
        return job_id if st and st["state"] in ACTIVE else None

    def set_pending(self, key, job_id: str) -> None:
        self._pending[key] = job_id


def graph_identity(session) -> tuple:
    """A key for one version of a graph file (name, mtime, size)."""
    path = getattr(session, "path", None)
    try:
        st = path.stat()
        return (session.name, st.st_mtime_ns, st.st_size)
    except (OSError, AttributeError):
        return (session.name, id(session))


def is_attention_graph(graph) -> bool:
    return graph.kind == ATTENTION_GRAPH


def check_compatible(config: LiveConfig, graph, need_transcoders: bool = True) -> None:
    """LiveError unless the graph was made by the live model (and its transcoders)."""
    model = str(graph.model or "")
    if model != config.model_ref and not _same_path(model, config.model_ref):
        raise LiveError(f"this graph was made with model {model or '(unknown)'!r}, the app runs {config.model_ref!r} "
                        f"(start it with --model {model or 'MODEL'} to work on this graph)")
    if need_transcoders:
        tcs = str(graph.transcoders or "")
        if tcs != config.transcoders_ref and not _same_path(tcs, config.transcoders_ref):
            raise LiveError(f"this graph was made with transcoders {tcs or '(unknown)'!r}, the app runs "
                            f"{config.transcoders_ref!r}: feature indices would not match")


def _same_path(a: str, b: str) -> bool:
    try:
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    except (OSError, ValueError):
        return False


def target_specs(graph) -> list[str]:
    """The graph's logit targets as target specs ('#44', '#44 - #58') for re-running them."""
    out = []
    for t in graph.targets:
        if t.kind == "token" and t.token_id >= 0:
            out.append(f"#{t.token_id}")
        elif t.kind == "direction" and len(t.spec.get("plus", [])) == 1 and len(t.spec.get("minus", [])) == 1:
            out.append(f"#{t.spec['plus'][0]} - #{t.spec['minus'][0]}")
        else:
            raise LiveError(f"target {t.label!r} cannot be re-created (a custom direction)")
    return out
