"""Reference `.pt` graphs (circuit-tracer's `Graph.to_pt`, and the seed's tool), read safely.

Such a file is a `torch.save` of a dict::

    input_string        str
    input_tokens        (n_pos,) long
    adjacency_matrix    (N, N) float, rows = targets, columns = sources
    active_features     (n_active, 3) long: layer, pos, feature index (every active feature)
    selected_features   (n_sel,) long: indices into active_features of the feature nodes
    activation_values   (n_active,) float, aligned with active_features
    logit_tokens        (n_logits,) long          (newer files: logit_targets, a list of
    logit_probabilities (n_logits,) float          LogitTarget(token_str, vocab_idx) records)
    cfg                 the model config object (TransformerLens HookedTransformerConfig or
                        circuit-tracer's UnifiedConfig): n_layers, d_model, d_vocab, tokenizer_name
    scan                str | list[str] | None  (newer files: scan_name; also vocab_size)

Node order: the selected features, then error nodes layer-major (n_layers x n_pos: error[l][p]
is node n_sel + l * n_pos + p), then one token node per position, then the logits.

Safety: the file is opened with ``torch.load(weights_only=True)``, which only rebuilds tensors,
plain containers and allow-listed classes. Classes of the tools that write these files
(modules ``transformer_lens``, ``circuit_tracer``, ``nnsight``, ``transformers``) are allow-listed
as inert placeholders (`PickledObject`) that merely record their constructor arguments and state:
none of their code is imported or run, so the file opens without TransformerLens installed. Any
other global (``os.system``, ``builtins.eval``, ...) makes the load fail with GraphFormatError
before anything is called.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tracer.graph.errors import GraphFormatError
from tracer.limits import MAX_LAYERS
from tracer.graph.graph import Graph, Target

# Top-level modules whose classes may appear in a reference graph; they become placeholders.
PRODUCER_MODULES = ("transformer_lens", "circuit_tracer", "nnsight", "transformers")


class PickledObject:
    """An inert stand-in for an object of a class that is not (and need not be) importable.

    `module` and `name` say what it was; `args` / `kwargs` are what it was constructed with
    (a NamedTuple's fields, an enum's value), `state` what pickle would have restored into it
    (usually the instance __dict__)."""

    _pickled_module = "?"
    _pickled_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["args"] = args
        obj.__dict__["kwargs"] = kwargs
        obj.__dict__["state"] = None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["state"] = state

    @property
    def module(self) -> str:
        return type(self)._pickled_module

    @property
    def name(self) -> str:
        return type(self)._pickled_name

    def fields(self) -> dict:
        """The recorded attributes: dict state merged with slot state (a (dict, slots) tuple)."""
        st = self.state
        out: dict = {}
        if isinstance(st, tuple) and len(st) == 2:
            for part in st:
                if isinstance(part, dict):
                    out.update(part)
        elif isinstance(st, dict):
            out.update(st)
        return out

    def get(self, key: str, default=None):
        return self.fields().get(key, default)

    def __repr__(self) -> str:
        return f"<pickled {self.module}.{self.name} args={self.args!r} state keys={sorted(self.fields())}>"


def _placeholder(full_path: str) -> type:
    module, _, name = full_path.rpartition(".")
    safe = re.sub(r"\W", "_", name) or "Object"
    return type(safe, (PickledObject,), {"_pickled_module": module, "_pickled_name": name,
                                         "__module__": __name__})


def _is_producer(full_path: str) -> bool:
    root = full_path.split(".", 1)[0]
    return root in PRODUCER_MODULES


def read_reference_pt(path: str | Path) -> dict[str, Any]:
    """The raw dict of a reference .pt, loaded without running pickled code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise GraphFormatError(f"{path}: no such file")
    with open(path, "rb") as f:
        zipped = f.read(2) == b"PK"
    if not zipped:
        # the legacy (pre-zip) torch.save layout declares storage sizes that torch allocates before
        # reading them: a tiny file could ask for any amount of memory
        raise GraphFormatError(f"{path}: not a readable reference graph (.pt): not a zip-format torch file "
                               "(legacy torch.save files are not read)")
    placeholders: dict[str, type] = {}

    def admit(names) -> None:
        for full in names:
            if full in placeholders:
                continue
            if not _is_producer(full):
                raise GraphFormatError(
                    f"{path}: refusing to load: the file references {full!r}, which is not a tensor, a plain "
                    f"container or a class of {', '.join(PRODUCER_MODULES)}; loading it could run code")
            placeholders[full] = _placeholder(full)

    try:
        admit(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except GraphFormatError:
        raise
    except Exception:  # noqa: BLE001 - not a zip checkpoint (legacy format): discover globals by loading
        pass

    for _ in range(64):
        try:
            with torch.serialization.safe_globals([(cls, full) for full, cls in placeholders.items()]), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
            break
        except GraphFormatError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever torch raises, report it as a format problem
            message = str(err)
            m = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"unsupported global:?\s*([\w.]+)", message, re.I)
            if m and m.group(1) not in placeholders:
                admit([m.group(1)])
                continue
            detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", message, re.S)
            first = (detail.group(1) if detail else message).strip().splitlines()
            first = first[0] if first else type(err).__name__
            raise GraphFormatError(f"{path}: not a readable reference graph (.pt): {first}") from err
    else:
        raise GraphFormatError(f"{path}: too many unknown classes in the file")
    if not isinstance(obj, dict):
        raise GraphFormatError(f"{path}: a .pt file, but it holds a {type(obj).__name__}, not a graph dict")
    return obj


def _declared(x, limit: int) -> tuple[int, int]:
    """(elements, bytes) that `x` (a tensor or nested list of tensors / numbers) expands to;
    stops counting past `limit` elements."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.numel(), x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        n = b = 0
        for item in x:
            dn, db = _declared(item, limit)
            n, b = n + dn, b + db
            if n > limit:
                break
        return n, b
    return 1, 8


def _np(x, name: str, path, dtype=None) -> np.ndarray:
    import torch

    from tracer import limits

    # Shared rows (a list of one row object repeated), expanded tensors (stride 0) and sparse
    # tensors are small in the file but large once made dense: check before materialising.
    n, nbytes = _declared(x, limits.MAX_EDGE_ENTRIES)
    size = Path(path).stat().st_size
    if n > limits.MAX_EDGE_ENTRIES:
        raise GraphFormatError(f"{path}: {name} declares more than {limits.MAX_EDGE_ENTRIES:,} values")
    if nbytes > size + (1 << 20):
        raise GraphFormatError(f"{path}: {name} declares {n:,} values ({limits.format_bytes(nbytes)}) but the file "
                               f"holds {limits.format_bytes(size)}: shared or expanded rows are not expanded")
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.is_sparse:
            t = t.to_dense()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        arr = t.numpy()
    elif isinstance(x, (list, tuple, np.ndarray)):
        arr = np.asarray(x)
    else:
        raise GraphFormatError(f"{path}: {name} is a {type(x).__name__}, expected a tensor")
    return arr.astype(dtype) if dtype is not None else arr


def _cfg_value(cfg, key: str):
    if cfg is None:
        return None
    if isinstance(cfg, (dict, PickledObject)):
        return cfg.get(key)
    return getattr(cfg, key, None)


def _logit_targets(d: dict, path) -> tuple[list[int], list[str | None]]:
    import torch

    if d.get("logit_tokens") is not None:
        ids = _np(d["logit_tokens"], "logit_tokens", path, np.int64).reshape(-1).tolist()
        return ids, [None] * len(ids)
    targets = d.get("logit_targets")
    if targets is None:
        raise GraphFormatError(f"{path}: neither logit_tokens nor logit_targets")
    if isinstance(targets, torch.Tensor):
        ids = targets.reshape(-1).tolist()
        return [int(i) for i in ids], [None] * len(ids)
    ids, strs = [], []
    for t in targets:
        if isinstance(t, PickledObject):
            f = t.fields()
            if t.args and len(t.args) >= 2:  # NamedTuple LogitTarget(token_str, vocab_idx)
                s, i = t.args[0], t.args[1]
            else:
                i = f.get("vocab_idx", f.get("token_id", -1))
                s = f.get("token_str", f.get("token"))
        elif isinstance(t, (tuple, list)) and len(t) >= 2:
            s, i = t[0], t[1]
        elif isinstance(t, dict):
            i, s = t.get("vocab_idx", t.get("token_id", -1)), t.get("token_str", t.get("token"))
        else:
            i, s = t, None
        ids.append(int(i))
        strs.append(str(s) if s not in (None, "") else None)
    return ids, strs


def _tokenizer_for(name: str | None):
    """A tokenizer from the local Hugging Face cache only (no download), or None."""
    if not name:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, local_files_only=True, trust_remote_code=False)
    except Exception:  # noqa: BLE001 - any failure just means: no token strings
        return None


def load_reference_pt(path: str | Path, tokenizer=None) -> Graph:
    """A Graph from a reference .pt graph. Token strings come from `tokenizer` (or the config's
    tokenizer if it is in the local Hugging Face cache), else read ``<id>``."""
    path = Path(path)
    d = read_reference_pt(path)
    required = ("input_tokens", "adjacency_matrix", "active_features", "selected_features", "activation_values",
                "logit_probabilities")
    missing = [k for k in required if k not in d]
    if missing:
        raise GraphFormatError(f"{path}: not a reference graph: missing {missing} (has {sorted(d)})")
    input_ids = _np(d["input_tokens"], "input_tokens", path, np.int64).reshape(-1)
    adjacency = _np(d["adjacency_matrix"], "adjacency_matrix", path, np.float32)
    active = _np(d["active_features"], "active_features", path, np.int64).reshape(-1, 3)
    selected = _np(d["selected_features"], "selected_features", path, np.int64).reshape(-1)
    act_values = _np(d["activation_values"], "activation_values", path, np.float32).reshape(-1)
    probs = _np(d["logit_probabilities"], "logit_probabilities", path, np.float64).reshape(-1)
    logit_ids, logit_strs = _logit_targets(d, path)
    cfg = d.get("cfg")
    n_pos, n_sel, n_logits = len(input_ids), len(selected), len(logit_ids)
    N = adjacency.shape[0]
    if adjacency.ndim != 2 or adjacency.shape[1] != N:
        raise GraphFormatError(f"{path}: adjacency_matrix must be square, got {list(adjacency.shape)}")
    if len(probs) != n_logits:
        raise GraphFormatError(f"{path}: {n_logits} logit tokens but {len(probs)} logit probabilities")
    n_layers = _cfg_value(cfg, "n_layers")
    inferred, rem = divmod(N - n_sel - n_pos - n_logits, n_pos) if n_pos else (0, 1)
    if n_layers is None:
        if rem or inferred < 0:
            raise GraphFormatError(f"{path}: cannot infer the number of layers from a {N}x{N} adjacency matrix")
        n_layers = inferred
    if not isinstance(n_layers, (int, np.integer)) or isinstance(n_layers, bool) or not 0 <= n_layers <= MAX_LAYERS:
        raise GraphFormatError(f"{path}: cfg.n_layers = {n_layers!r:.40} is not a layer count in 0..{MAX_LAYERS}")
    n_layers = int(n_layers)
    expected = n_sel + n_layers * n_pos + n_pos + n_logits
    if N != expected:
        raise GraphFormatError(
            f"{path}: adjacency_matrix is {N}x{N}, but {n_sel} features + {n_layers} layers x {n_pos} errors + "
            f"{n_pos} tokens + {n_logits} logits = {expected} nodes")
    if n_sel and (selected.min() < 0 or selected.max() >= len(active)):
        raise GraphFormatError(f"{path}: selected_features index outside active_features ({len(active)} rows)")
    features = active[selected] if n_sel else np.zeros((0, 3), np.int64)
    if len(act_values) == len(active):
        activations = act_values[selected] if n_sel else np.zeros(0, np.float32)
    elif len(act_values) == n_sel:
        activations = act_values
    else:
        raise GraphFormatError(f"{path}: {len(act_values)} activation values for {len(active)} active features")
    errors = np.array([(layer, pos) for layer in range(n_layers) for pos in range(n_pos)], dtype=np.int64).reshape(-1, 2)
    rows = np.concatenate([np.arange(n_sel), N - n_logits + np.arange(n_logits)]).astype(np.int64)
    adj = np.ascontiguousarray(adjacency[rows])
    if not np.isfinite(adj).all():
        raise GraphFormatError(f"{path}: adjacency_matrix holds NaN or infinite values")

    tok = tokenizer if tokenizer is not None else _tokenizer_for(_cfg_value(cfg, "tokenizer_name")
                                                                 or _cfg_value(cfg, "model_name"))

    def decode(i: int) -> str | None:
        if tok is None:
            return None
        try:
            return tok.decode([int(i)])
        except Exception:  # noqa: BLE001
            return None

    tokens = [decode(i) or f"<{i}>" for i in input_ids.tolist()]
    targets = [Target(label=s or decode(i) or f"<{i}>", token_id=int(i), probability=float(p))
               for i, s, p in zip(logit_ids, logit_strs, probs.tolist())]
    scan = d.get("scan", d.get("scan_name"))
    if isinstance(scan, (list, tuple)):
        scan = ",".join(str(s) for s in scan)
    cfg_info = {}
    for key in ("model_name", "tokenizer_name", "n_layers", "d_model", "d_vocab", "n_ctx", "original_architecture"):
        v = _cfg_value(cfg, key)
        if isinstance(v, (str, int, float, bool)):
            cfg_info[key] = v
    vocab_size = d.get("vocab_size", cfg_info.get("d_vocab"))
    config: dict[str, Any] = {}
    if isinstance(vocab_size, int):
        config["vocab_size"] = vocab_size
    n_rows = n_sel + n_logits
    graph = Graph(
        prompt=str(d.get("input_string", "")), input_ids=input_ids, tokens=tokens, n_layers=n_layers,
        features=features.astype(np.int64), activations=activations.astype(np.float32), errors=errors,
        targets=targets, adjacency=adj, values=np.full(n_rows, np.nan), constants=np.full(n_rows, np.nan),
        unexplored=np.zeros(n_rows), model=str(cfg_info.get("model_name", "")), scan=str(scan or ""),
        transcoders=str(scan or ""), slug=path.stem, config=config,
        info={
            "imported_from": "reference-pt",
            "source": str(path),
            "cfg": cfg_info,
            "cfg_class": (f"{cfg.module}.{cfg.name}" if isinstance(cfg, PickledObject) else type(cfg).__name__),
            "n_active_features": int(len(active)),
            "sum_rule_checkable": False,
            "sum_rule": "not checkable: reference .pt graphs store neither target values nor constant terms",
        },
    )
    try:
        graph.validate()
    except GraphFormatError as err:
        raise GraphFormatError(f"{path}: {err}") from None
    return graph


__all__ = ["PRODUCER_MODULES", "PickledObject", "load_reference_pt", "read_reference_pt"]
