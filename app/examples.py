"""Top-activating examples of a feature, from a feature-examples store if there is one.

The store (tracer.features.store.ExampleStore, in the published activation-stats format) is
optional: without it, or without an entry for a feature, the details panel says so.

A graphs folder may hold one store per transcoder set: every subfolder named `feature_examples`
or `feature_examples-<anything>` (e.g. `feature_examples-gemma-3-270m-plt/`) is a store, and each
graph's features are looked up in the store whose manifest records the graph's transcoder set
(graphs of several models share a folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracer.graph.neuronpedia import image_to_data_uri

STORE_FOLDER = "feature_examples"


def find_stores(graphs_dir: Path, explicit: str | Path | None = None) -> list[Path]:
    """The stores to use: `explicit` alone if given (a store, or a folder of stores laid out as
    a graphs folder's), else the graphs folder's feature_examples[-*] subfolders, in name order."""
    if explicit:
        explicit = Path(explicit)
        inner = [] if (explicit / "manifest.json").exists() else _store_folders(explicit)
        return inner or [explicit]
    return _store_folders(Path(graphs_dir))


def _store_folders(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_dir() and (p.name == STORE_FOLDER or p.name.startswith(STORE_FOLDER + "-"))]


def find_store(graphs_dir: Path, explicit: str | Path | None = None) -> Path | None:
    """The first store find_stores gives (None: no store)."""
    found = find_stores(graphs_dir, explicit)
    return found[0] if found else None


def _get(example, name, default=None):
    if isinstance(example, dict):
        return example.get(name, default)
    return getattr(example, name, default)


def _as_array(image) -> np.ndarray | None:
    from PIL import Image

    from tracer.images import open_image

    if image is None:
        return None
    if isinstance(image, np.ndarray):
        return image
    if hasattr(image, "numpy"):
        return np.asarray(image.numpy())
    if isinstance(image, (Image.Image, bytes, bytearray)) or (isinstance(image, (str, Path)) and Path(image).is_file()):
        return np.asarray(open_image(image))
    return None


def thumbnail(image, cell=None, grid: int | tuple | None = None, size: int = 96) -> str | None:
    """PNG data URI of a thumbnail with the activating grid cell outlined."""
    from PIL import Image, ImageDraw

    array = _as_array(image)
    if array is None:
        return None
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, -1)
    img = Image.fromarray(np.asarray(array[..., :3], dtype=np.uint8)).convert("RGB")
    scale = size / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)
    if cell is not None and grid:
        rows, cols = (grid, grid) if isinstance(grid, int) else tuple(grid)
        row, col = (int(v) for v in list(cell)[-2:])
        h, w = img.height / rows, img.width / cols
        ImageDraw.Draw(img).rectangle([col * w, row * h, (col + 1) * w - 1, (row + 1) * h - 1], outline=(255, 0, 255), width=2)
    return image_to_data_uri(np.asarray(img))


IMAGE_TOKENS = {"<image_soft_token>", "<image>", "<|image_pad|>"}


def token_window(tokens: list[str], active: int | None, radius: int = 10) -> list[tuple[str, bool]]:
    """Tokens around the active position, each image's soft tokens collapsed into one chip."""
    out: list[tuple[str, bool]] = []
    active_at = None
    for i, tok in enumerate(tokens):
        tok = str(tok)
        if tok in IMAGE_TOKENS:
            if out and out[-1][0] == "[image]" and (i - 1) < len(tokens) and str(tokens[i - 1]) in IMAGE_TOKENS:
                if i == active:
                    out[-1] = ("[image]", True)
                    active_at = len(out) - 1
                continue
            out.append(("[image]", i == active))
        else:
            out.append((tok if tok.strip() else (repr(tok)[1:-1] or "␣"), i == active))
        if i == active:
            active_at = len(out) - 1
    if active_at is None:
        return out[: 2 * radius]
    return out[max(0, active_at - radius): active_at + radius + 1]


def _set_name(ref: str) -> str:
    """A transcoder set's name from a path, hub id or display name: 'tracer/data/toy-plt',
    'toy-plt' and 'toy-plt (shipped)' are all 'toy-plt'."""
    return str(ref).split(" (")[0].rstrip("/").replace("\\", "/").split("/")[-1]


class FeatureExamples:
    def __init__(self, path: Path | None, store=None):
        self.path = path
        self.store = store
        self.note = ""
        if store is not None:
            return
        if path is None:
            self.note = ("No feature-examples store: compute one with `python -m tracer features ...` and put it in "
                         f"the graphs folder as {STORE_FOLDER}/ (or pass --examples PATH).")
            return
        try:
            from tracer.features.store import ExampleStore
        except ImportError:
            self.note = "Feature examples need tracer.features.store, which this installation does not have."
            return
        try:
            self.store = ExampleStore(path)
        except Exception as err:  # a broken store: say so, keep the app running
            self.note = f"Cannot open the feature-examples store at {path}: {type(err).__name__}: {err}"

    def store_transcoders(self) -> str | None:
        """The name of the transcoder set the store was computed with (None: not recorded)."""
        manifest = getattr(self.store, "manifest", None) or {}
        info = manifest.get("transcoder") or {}
        name = info.get("source") or info.get("name")
        return _set_name(name) if name else None

    def top(self, layer: int, feature: int, k: int = 6, grid: int | tuple | None = None,
            transcoders: str | None = None) -> tuple[list[dict], str]:
        """([{value, tokens: [(text, is_active)], text, thumb}], note). transcoders: the graph's
        transcoder set; a store computed with another set has nothing to say about its features
        (graphs of several models can share a folder)."""
        if self.store is None:
            return [], self.note
        own = self.store_transcoders()
        if transcoders and own and _set_name(transcoders) != own:
            return [], (f"The feature-examples store in this folder was computed with the transcoders {own}; "
                        f"this graph's features belong to {_set_name(transcoders)}.")
        try:
            raw = list(self.store.top_examples(int(layer), int(feature), k))
        except Exception as err:
            return [], f"No examples for layer {layer} feature {feature} ({type(err).__name__}: {err})"
        count = None
        try:
            count = self.store.firing_count(int(layer), int(feature))
        except Exception:
            pass
        out = []
        for ex in raw:
            tokens = _get(ex, "tokens") or []
            active = _get(ex, "token_position")
            own = _get(ex, "grid")
            example_grid = tuple(own) if own and all(own) else (_get(ex, "tokens_per_side") or grid)
            out.append({
                "value": float(_get(ex, "value", 0.0) or 0.0),
                "text": str(_get(ex, "text", "") or ""),
                "tokens": token_window(list(tokens), active),
                "thumb": thumbnail(_get(ex, "image"), _get(ex, "image_cell"), example_grid),
            })
        note = "" if out else f"The store has no examples for layer {layer} feature {feature}."
        if count is not None:
            note = (note + " " if note else "") + f"Fires on {count} tokens of the data set."
        return out, note


class FeatureExampleStores:
    """Every store of a graphs folder; a graph's features are looked up in the store computed
    with its transcoder set."""

    def __init__(self, paths: list[Path]):
        self.stores = [FeatureExamples(Path(p)) for p in paths]

    def pick(self, transcoders: str | None) -> tuple[FeatureExamples | None, str]:
        """(the store for a graph of this transcoder set, None and why not)."""
        if not self.stores:
            return None, FeatureExamples(None).note
        if len(self.stores) == 1:
            return self.stores[0], ""  # its own top() says whether the sets differ
        own = {id(s): s.store_transcoders() for s in self.stores}
        if transcoders:
            wanted = _set_name(transcoders)
            for s in self.stores:
                if own[id(s)] == wanted:
                    return s, ""
            unrecorded = [s for s in self.stores if s.store is not None and own[id(s)] is None]
            if len(unrecorded) == 1:  # an older store that did not record its set
                return unrecorded[0], ""
            have = sorted({name for name in own.values() if name})
            broken = [s.note for s in self.stores if s.store is None and s.note]
            return None, (f"No feature-examples store for the transcoders {wanted} in this folder (stores for: "
                          f"{', '.join(have) or 'none'}). Compute one with `python -m tracer features --transcoders "
                          f"... --out {STORE_FOLDER}-{wanted}` in the graphs folder."
                          + (" " + broken[0] if broken else ""))
        return None, ("This graph does not record its transcoder set, and the folder holds several feature-examples "
                      "stores: pass --examples PATH to choose one.")

    def top(self, layer: int, feature: int, k: int = 6, grid: int | tuple | None = None,
            transcoders: str | None = None) -> tuple[list[dict], str]:
        store, note = self.pick(transcoders)
        if store is None:
            return [], note
        return store.top(layer, feature, k=k, grid=grid, transcoders=transcoders)

    def warm(self) -> None:
        """Open every store and read its tables once (their first lookup loads them)."""
        for s in self.stores:
            s.top(0, 0, k=1)
