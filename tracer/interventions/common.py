"""What interventions share: the model bundle, prompt preparation, next-token comparisons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tracer.graph.graph import grids_text
from tracer.models.base import PromptInputs, VLMAdapter, get_adapter, prepare_prompt


@dataclass
class Bundle:
    """A model, its processor and (optionally) its transcoder set, with the model's adapter.

    Anything with `.model`, `.processor` and `.transcoders` (a TracingSession) or a tuple
    (model, processor[, transcoders]) converts to one with `as_bundle`.
    """

    model: Any
    processor: Any
    transcoders: Any = None
    adapter: VLMAdapter | None = None

    def __post_init__(self):
        if self.adapter is None:
            self.adapter = get_adapter(self.model)

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)


def as_bundle(session) -> Bundle:
    """A Bundle from a TracingSession, a Bundle, or a tuple (model, processor[, transcoders])."""
    if isinstance(session, Bundle):
        return session
    if isinstance(session, (tuple, list)):
        return Bundle(*session)
    return Bundle(session.model, session.processor, getattr(session, "transcoders", None),
                  getattr(session, "adapter", None))


def prompt_inputs(bundle: Bundle, prompt: str | PromptInputs, image=None, chat: bool = True) -> PromptInputs:
    """The tokenised prompt exactly as attribution prepares it (chat template, image marker)."""
    if isinstance(prompt, PromptInputs):
        return prompt
    ad = bundle.adapter
    return prepare_prompt(bundle.processor, prompt, image, chat=chat, image_token_id=ad.image_token_id,
                          tokens_per_image=ad.tokens_per_image, adapter=ad)


def model_inputs(bundle: Bundle, prompt: PromptInputs) -> dict[str, torch.Tensor]:
    """prompt.inputs on the model's device, pixel values in the model's dtype."""
    return bundle.adapter.model_inputs(prompt.inputs)


def resolve_token_id(tokenizer, token: str | int) -> int:
    """A token id from an int, '#123', or text that is one token (see targets.resolve_token)."""
    if isinstance(token, int):
        return int(token)
    from tracer.attribution.targets import resolve_token

    return resolve_token(tokenizer, token)


def image_cell_positions(prompt: PromptInputs, cells) -> list[int]:
    """Sequence positions of image soft tokens given as (image, row, col) or (row, col) (image 0)
    cells, through prompt.image_grid. Raises ValueError for a cell the prompt does not have."""
    lookup = {tuple(int(x) for x in g): int(p) for g, p in zip(prompt.image_grid, prompt.image_positions)}
    out = []
    for cell in cells:
        cell = tuple(int(x) for x in cell)
        if len(cell) == 2:
            cell = (0,) + cell
        if cell in lookup and lookup[cell] in out:
            raise ValueError(f"image cell {cell} is given twice")
        if len(cell) != 3 or cell not in lookup:
            raise ValueError(f"image cell {cell} is not in this prompt (images: {len(prompt.images)}, "
                             f"soft-token grid {grids_text(prompt.image_grids)} rows x cols)")
        out.append(lookup[cell])
    return out


@dataclass
class TokenProb:
    """One token of a next-token distribution."""

    token: str
    token_id: int
    prob: float
    logit: float

    def to_dict(self) -> dict:
        return {"token": self.token, "id": self.token_id, "p": self.prob, "logit": self.logit}


def top_tokens(logits: torch.Tensor, tokenizer, k: int) -> list[TokenProb]:
    """The k most likely next tokens of a logit vector (V,)."""
    logits = logits.detach().double().cpu()
    probs = torch.softmax(logits, -1)
    p, i = torch.topk(probs, min(k, probs.numel()))
    return [TokenProb(tokenizer.convert_ids_to_tokens(int(t)), int(t), float(v), float(logits[t]))
            for v, t in zip(p, i)]


@dataclass
class NextTokenComparison:
    """The next-token distribution at the last position before and after a change."""

    prompt: PromptInputs = field(repr=False)
    logits_before: torch.Tensor = field(repr=False)  # (V,) at the last position
    logits_after: torch.Tensor = field(repr=False)
    top_before: list[TokenProb]
    top_after: list[TokenProb]
    tokenizer: Any = field(default=None, repr=False)

    @property
    def probs_before(self) -> torch.Tensor:
        return torch.softmax(self.logits_before.double(), -1)

    @property
    def probs_after(self) -> torch.Tensor:
        return torch.softmax(self.logits_after.double(), -1)

    @property
    def logit_changes(self) -> torch.Tensor:
        """logits_after - logits_before, (V,)."""
        return self.logits_after.double() - self.logits_before.double()

    def prob_before(self, token: str | int) -> float:
        return float(self.probs_before[resolve_token_id(self.tokenizer, token)])

    def prob_after(self, token: str | int) -> float:
        return float(self.probs_after[resolve_token_id(self.tokenizer, token)])

    def logit_change(self, token: str | int) -> float:
        return float(self.logit_changes[resolve_token_id(self.tokenizer, token)])

    @property
    def answer_before(self) -> str:
        return self.top_before[0].token

    @property
    def answer_after(self) -> str:
        return self.top_after[0].token

    def changes(self) -> list[dict]:
        """For every token in either top-k list: probabilities before / after and the logit change,
        most likely after first."""
        ids = list(dict.fromkeys([t.token_id for t in self.top_after] + [t.token_id for t in self.top_before]))
        pb, pa, dl = self.probs_before, self.probs_after, self.logit_changes
        rows = [{"token": self.tokenizer.convert_ids_to_tokens(i) if self.tokenizer is not None else str(i),
                 "id": i, "p_before": float(pb[i]), "p_after": float(pa[i]), "logit_change": float(dl[i])}
                for i in ids]
        return sorted(rows, key=lambda r: -r["p_after"])

    def to_dict(self) -> dict:
        """JSON-ready summary (no tensors)."""
        return {"top_before": [t.to_dict() for t in self.top_before],
                "top_after": [t.to_dict() for t in self.top_after],
                "changes": self.changes()}

    def format(self) -> str:
        """A small table: token, p before, p after, logit change."""
        lines = [f"{'token':<16} {'p before':>9} {'p after':>9} {'Δ logit':>9}"]
        for r in self.changes():
            lines.append(f"{r['token']!r:<16} {r['p_before']:9.4f} {r['p_after']:9.4f} {r['logit_change']:+9.4f}")
        return "\n".join(lines)


def parse_region(text: str, n_images: int = 1) -> list:
    """The command-line form of an image region, one syntax per kind so that nothing is guessed:

        'r,c' or 'r,c;r,c;...'        image cells (row, column) of the only image
        'img1:r,c;r,c'                cells of image 1 (images count from 0); 'img0:r,c;img1:r,c'
                                      names several; a prompt with several images must name them
        'i,r,c;...'                   image cells of image i
        'pos:40,41'                   image soft-token sequence positions

    Returns cells as (image, row, col) tuples or positions as ints; a cell or position given twice
    is an error (it would be ablated once, not twice)."""
    from tracer.errors import InputError

    raw = text.strip()
    if raw.lower().startswith("pos:"):
        try:
            items = [int(x) for x in raw[4:].split(",") if x.strip()]
        except ValueError:
            raise InputError(f"region {text!r}: positions are integers, e.g. 'pos:40,41'") from None
        what = "position"
    else:
        items = []
        image = None  # the image an 'imgK:' prefix named, for this part and the ones after it
        for part in (c.strip() for c in raw.split(";")):
            head, sep, rest = part.partition(":")
            if sep:
                if not (head.strip().lower().startswith("img") and head.strip()[3:].isdigit()):
                    raise InputError(f"region {text!r}: {head!r} does not name an image; write 'img1:r,c;r,c'")
                image, part = int(head.strip()[3:]), rest.strip()
            part = part.strip("()")
            if not part:
                continue
            try:
                cell = tuple(int(x) for x in part.split(","))
            except ValueError:
                cell = ()
            if len(cell) not in ((2,) if image is not None else (2, 3)) or min(cell) < 0:
                raise InputError(f"region {text!r}: {part!r} is not an image cell 'row,col' or 'image,row,col' "
                                 "(cells are separated by ';', an image is named by 'img1:'; sequence positions "
                                 "are written 'pos:40,41')")
            if len(cell) == 2 and image is None and n_images > 1:
                raise InputError(f"region {text!r}: the prompt has {n_images} images; name the image of each "
                                 "cell, e.g. 'img1:2,3;2,4' (images count from 0)")
            items.append(cell if len(cell) == 3 else (image or 0,) + cell)
        what = "cell"
    if not items:
        raise InputError(f"region {text!r} is empty: give cells 'row,col;row,col' or positions 'pos:40,41'")
    seen = set()
    for item in items:
        if item in seen:
            raise InputError(f"region {text!r} names {what} {item} twice")
        seen.add(item)
    return items
