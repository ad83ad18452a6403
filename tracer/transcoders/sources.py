"""Image + prompt data for transcoder training and evaluation.

A source yields `PromptItem`s (a user prompt, zero or more images, optionally an answer that is
appended after the model's turn marker). Sources:

- ``toy``: the built-in shapes world (train split for training, held-out split for reports).
- ``folder:PATH``: a folder with a ``.jsonl`` file of ``{"image": "rel/path.png", "prompt": "...",
  "answer": "..."}`` lines (``image`` may be null or missing for text-only prompts; ``question``
  or ``text`` are accepted for ``prompt``), or just images, which get ``prompt=`` (default
  "Describe this image.").
- ``hf:NAME``: a Hugging Face ``datasets`` dataset (streamed; the optional ``datasets``
  package must be installed), with configurable columns.

Spec strings (``--data``) are ``KIND[:TARGET][,key=value...]``, e.g.
``toy``, ``folder:/data/pics,weight=0.5``, ``hf:lmms-lab/VQAv2,split=validation,image=image,
text=question,answer=multiple_choice_answer,weight=2``. Weights set how often each source is
drawn from when several are mixed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from tracer.errors import InputError


class DataSourceError(InputError):
    """A data spec that cannot be used (unknown kind, missing folder, unreadable records, a dataset
    that cannot be loaded): one line for the user."""


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


@dataclass
class PromptItem:
    prompt: str
    images: list = field(default_factory=list)  # PIL images
    answer: str | None = None
    tag: str = ""  # e.g. the toy question type


class Source:
    name = "source"
    weight: float = 1.0

    def train_items(self, seed: int) -> Iterator[PromptItem]:
        raise NotImplementedError

    def heldout_items(self, n: int, seed: int = 0) -> list[PromptItem]:
        raise NotImplementedError


class ToySource(Source):
    """The shapes world: train split for training, held-out scenes for evaluation."""

    name = "toy"

    def __init__(self, weight: float = 1.0, with_answers: bool = True):
        self.weight = weight
        self.with_answers = with_answers

    def _item(self, ex) -> PromptItem:
        return PromptItem(ex.question, [ex.image()] if ex.has_image else [],
                          ex.answer if self.with_answers else None, ex.question_type)

    def train_items(self, seed: int) -> Iterator[PromptItem]:
        from tracer.toy import world

        for ex in world.examples("train", seed=seed):
            yield self._item(ex)

    def heldout_items(self, n: int, seed: int = 0) -> list[PromptItem]:
        from tracer.toy import world

        return [self._item(ex) for ex in world.examples("heldout", seed=seed, count=n)]


class FolderSource(Source):
    """Images with prompts from a folder (a .jsonl of records, or bare images + one prompt)."""

    name = "folder"

    def __init__(self, path: str | Path, weight: float = 1.0, prompt: str = "Describe this image.",
                 heldout_every: int = 20, file: str | None = None):
        self.path = Path(path).expanduser()
        self.weight = weight
        if not self.path.exists():
            raise DataSourceError(f"{self.path}: no such folder or file")
        folder = self.path if self.path.is_dir() else self.path.parent
        self.folder = folder
        records: list[dict] = []
        jsonl = [self.path] if self.path.is_file() else (
            [folder / file] if file else sorted(folder.glob("*.jsonl")))
        for jf in jsonl:
            for i, line in enumerate(jf.read_text().splitlines()):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataSourceError(f"{jf}:{i + 1}: not JSON: {exc}") from None
                text = rec.get("prompt", rec.get("question", rec.get("text")))
                if not isinstance(text, str):
                    raise DataSourceError(f"{jf}:{i + 1}: needs a 'prompt' (or 'question' / 'text') string")
                image = rec.get("image")
                records.append({"prompt": text, "image": image, "answer": rec.get("answer")})
        if not records:
            images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            records = [{"prompt": prompt, "image": str(p.relative_to(folder)), "answer": None} for p in images]
        if not records:
            raise DataSourceError(f"{self.path}: no .jsonl records and no images found")
        self.records = records
        self.heldout_every = max(2, int(heldout_every))

    def _item(self, rec: dict) -> PromptItem:
        images = []
        if rec["image"]:
            from tracer.images import open_image

            p = Path(rec["image"]).expanduser()
            images = [open_image(p if p.is_absolute() else self.folder / p)]
        return PromptItem(rec["prompt"], images, rec.get("answer"))

    def _split(self, heldout: bool) -> list[dict]:
        return [r for i, r in enumerate(self.records) if (i % self.heldout_every == 0) == heldout]

    def train_items(self, seed: int) -> Iterator[PromptItem]:
        pool = self._split(False) or self.records
        rng = random.Random(f"folder/{seed}")
        while True:
            order = list(range(len(pool)))
            rng.shuffle(order)
            for i in order:
                yield self._item(pool[i])

    def heldout_items(self, n: int, seed: int = 0) -> list[PromptItem]:
        pool = self._split(True) or self.records
        return [self._item(pool[i % len(pool)]) for i in range(min(n, len(pool)))]


class HFDatasetSource(Source):
    """A `datasets` dataset, streamed. The first `heldout` records are kept for evaluation."""

    name = "hf"

    def __init__(self, name: str, weight: float = 1.0, config: str | None = None, split: str = "train",
                 image: str | None = "image", text: str = "question", answer: str | None = None,
                 heldout: int = 500, streaming: bool = True, data_dir: str | None = None, data_files=None):
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise DataSourceError(
                "the 'hf:' data source needs the optional 'datasets' package: pip install datasets "
                "(or use the toy world or a folder of images with a prompts .jsonl)"
            ) from None
        self.dataset_name, self.weight, self.config, self.split = name, weight, config, split
        self.image_col, self.text_col, self.answer_col = image, text, answer
        self.heldout, self.streaming = int(heldout), streaming
        self.data_dir, self.data_files = data_dir, data_files

    def _load(self):
        import datasets

        kwargs = {"split": self.split, "streaming": self.streaming}
        if self.data_dir:
            kwargs["data_dir"] = self.data_dir
        if self.data_files:
            kwargs["data_files"] = self.data_files
        try:
            return datasets.load_dataset(self.dataset_name, self.config, **kwargs)
        except Exception as err:  # offline, no such dataset, a bad config: the user's spec, said in one line
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            raise DataSourceError(f"hf:{self.dataset_name}: cannot load the dataset ({type(err).__name__}: {first})"
                                  ) from None

    @staticmethod
    def _to_image(value):
        if value is None:
            return None
        if isinstance(value, Image.Image):
            return value.convert("RGB")
        if isinstance(value, dict):
            if value.get("bytes"):
                import io

                return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
            value = value.get("path")
        if isinstance(value, (str, Path)) and value:
            from tracer.images import open_image

            return open_image(value)
        if isinstance(value, (list, tuple)) and value:
            return HFDatasetSource._to_image(value[0])
        return None

    def _item(self, rec: dict) -> PromptItem | None:
        if self.text_col not in rec:
            raise DataSourceError(f"dataset {self.dataset_name} has no text column {self.text_col!r} "
                                  f"(columns: {', '.join(rec)})")
        text = rec[self.text_col]
        if isinstance(text, (list, tuple)):
            text = next((t for t in text if isinstance(t, str)), None)
        if not isinstance(text, str) or not text.strip():
            return None
        image = None
        if self.image_col:
            if self.image_col not in rec:
                raise DataSourceError(f"dataset {self.dataset_name} has no image column {self.image_col!r} "
                                      f"(columns: {', '.join(rec)})")
            image = self._to_image(rec[self.image_col])
        answer = rec.get(self.answer_col) if self.answer_col else None
        if isinstance(answer, (list, tuple)):
            answer = next((a for a in answer if isinstance(a, str)), None)
        return PromptItem(text, [image] if image is not None else [], answer if isinstance(answer, str) else None)

    def train_items(self, seed: int) -> Iterator[PromptItem]:
        epoch = 0
        while True:
            ds = self._load()
            if self.heldout:
                ds = ds.skip(self.heldout)  # the held-out records never reach training
            if self.streaming:
                ds = ds.shuffle(seed=seed + epoch, buffer_size=1000)
            else:
                ds = ds.shuffle(seed=seed + epoch)
            n = 0
            for rec in ds:
                item = self._item(rec)
                if item is not None:
                    n += 1
                    yield item
            if n == 0:
                raise DataSourceError(f"dataset {self.dataset_name}: no usable training records after the first "
                                      f"{self.heldout} (held out)")
            epoch += 1

    def heldout_items(self, n: int, seed: int = 0) -> list[PromptItem]:
        out = []
        for i, rec in enumerate(self._load()):
            if i >= min(n, self.heldout):
                break
            item = self._item(rec)
            if item is not None:
                out.append(item)
        return out


class MixedSource(Source):
    """Several sources drawn from in proportion to their weights (seeded)."""

    name = "mix"

    def __init__(self, sources: list[Source]):
        if not sources:
            raise DataSourceError("no data sources")
        for s in sources:
            if s.weight <= 0:
                raise DataSourceError(f"data source {s.name} has weight {s.weight}; weights must be > 0")
        self.sources = sources

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    def train_items(self, seed: int) -> Iterator[PromptItem]:
        iters = [s.train_items(seed) for s in self.sources]
        if len(iters) == 1:
            yield from iters[0]
            return
        rng = random.Random(f"mix/{seed}")
        while True:
            yield next(rng.choices(iters, weights=self.weights)[0])

    def heldout_items(self, n: int, seed: int = 0) -> list[PromptItem]:
        total = sum(self.weights)
        out = []
        for s in self.sources:
            out.extend(s.heldout_items(max(1, round(n * s.weight / total)), seed))
        return out


def _parse_value(v: str):
    low = v.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null", ""):
        return None
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def parse_source(spec: str) -> Source:
    """`toy`, `folder:PATH[,k=v...]`, `hf:NAME[,k=v...]` (see the module docstring)."""
    head, *opts = [p.strip() for p in spec.split(",")]
    kind, _, target = head.partition(":")
    kind = kind.strip().lower()
    kwargs = {}
    for opt in opts:
        if not opt:
            continue
        key, eq, value = opt.partition("=")
        if not eq:
            raise DataSourceError(f"data spec {spec!r}: option {opt!r} is not key=value")
        kwargs[key.strip().replace("-", "_")] = _parse_value(value.strip())
    if "weight" in kwargs:
        kwargs["weight"] = float(kwargs["weight"])
    try:
        if kind == "toy":
            return ToySource(**kwargs)
        if kind == "folder":
            if not target:
                raise DataSourceError("folder: needs a path, e.g. folder:/data/images")
            return FolderSource(target, **kwargs)
        if kind in ("hf", "datasets"):
            if not target:
                raise DataSourceError("hf: needs a dataset name, e.g. hf:lmms-lab/VQAv2")
            for key in ("image", "text", "answer", "config", "split"):
                if key in kwargs and kwargs[key] is not None:
                    kwargs[key] = str(kwargs[key])
            return HFDatasetSource(target, **kwargs)
    except TypeError as exc:
        raise DataSourceError(f"data spec {spec!r}: {exc}") from None
    raise DataSourceError(f"data spec {spec!r}: unknown kind {kind!r} (use toy, folder:PATH or hf:NAME)")


def make_source(specs: list[str] | None) -> MixedSource:
    return MixedSource([parse_source(s) for s in (specs or ["toy"])])


# -- batching ----------------------------------------------------------------------------------

@dataclass
class PromptBatch:
    inputs: dict[str, torch.Tensor]
    items: list[PromptItem]
    # per row: how many trailing real tokens are the appended answer (0: no answer)
    answer_lengths: torch.Tensor | None = None


def encode_items(processor, items: list[PromptItem], max_length: int | None = None) -> PromptBatch | None:
    """Tokenise items with the chat template (one batch, right padding as the processor does).

    Items longer than max_length tokens are dropped (cutting an image in half is not possible).
    """
    from tracer.models.base import end_of_turn_token, format_prompt

    tokenizer = getattr(processor, "tokenizer", processor)
    texts, answer_lengths = [], []
    eot = end_of_turn_token(tokenizer)
    for item in items:
        text = format_prompt(processor, item.prompt, len(item.images))
        n_answer = 0
        if item.answer:
            text = text + item.answer + eot
            n_answer = len(tokenizer(item.answer + eot, add_special_tokens=False)["input_ids"])
        texts.append(text)
        answer_lengths.append(n_answer)
    has_bos = bool(tokenizer.bos_token) and all(t.startswith(tokenizer.bos_token) for t in texts)
    kwargs = {"return_tensors": "pt", "padding": True, "add_special_tokens": not has_bos}
    if any(item.images for item in items):
        enc = processor(text=texts, images=[list(item.images) for item in items], **kwargs)
    else:
        enc = processor(text=texts, **kwargs)
    enc = dict(enc)
    if "token_type_ids" not in enc:
        enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
    if max_length is not None:
        lengths = enc["attention_mask"].sum(1)
        keep = [i for i, n in enumerate(lengths.tolist()) if n <= max_length]
        if len(keep) < len(items):
            if not keep:
                return None
            return encode_items(processor, [items[i] for i in keep], None)
    return PromptBatch(enc, list(items), torch.tensor(answer_lengths, dtype=torch.long))


def iter_batches(processor, items: Iterator[PromptItem], batch_size: int, max_length: int | None = None
                 ) -> Iterator[PromptBatch]:
    chunk: list[PromptItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == batch_size:
            batch = encode_items(processor, chunk, max_length)
            chunk = []
            if batch is not None:
                yield batch
    if chunk:
        batch = encode_items(processor, chunk, max_length)
        if batch is not None:
            yield batch


__all__ = [
    "FolderSource", "HFDatasetSource", "MixedSource", "PromptBatch", "PromptItem", "Source", "ToySource",
    "encode_items", "iter_batches", "make_source", "parse_source",
]
