"""Batches of toy examples in the form the toy VLM's processor produces."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tracer.models.base import end_of_turn_token, format_prompt
from tracer.toy import world

# Per-token labels of the auxiliary vision loss: class 0 is "no object here".
SHAPE_CLASSES = ("none",) + world.SHAPES
COLOR_CLASSES = ("none",) + tuple(world.COLORS)
MIN_COVERAGE = 0.15


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # processor output (input_ids, attention_mask, pixel_values, token_type_ids)
    answer_ids: torch.Tensor  # (B,) token id of each answer
    answer_pos: torch.Tensor  # (B,) position whose logits predict the answer
    has_image: torch.Tensor  # (B,) bool
    shape_labels: torch.Tensor  # (n_image_examples, 64) per-soft-token shape class
    color_labels: torch.Tensor  # (n_image_examples, 64)
    examples: list[world.Example]


def token_labels(scene: world.Scene) -> tuple[np.ndarray, np.ndarray]:
    """Shape and colour class of each image soft token (the object covering most of it)."""
    shape = np.zeros(world.TOKEN_GRID**2, dtype=np.int64)
    color = np.zeros(world.TOKEN_GRID**2, dtype=np.int64)
    best = np.zeros(world.TOKEN_GRID**2)
    for obj in scene.objects:
        cov = scene.token_coverage(obj).ravel()
        take = (cov > MIN_COVERAGE) & (cov > best)
        shape[take] = SHAPE_CLASSES.index(obj.shape)
        color[take] = COLOR_CLASSES.index(obj.color)
        best = np.maximum(best, np.where(take, cov, best))
    return shape, color


def half_labels() -> torch.Tensor:
    """(64, 2) per-soft-token labels of the auxiliary position loss: is the token in the bottom
    half of the image, is it in the right half (the halves the position questions ask about)."""
    index = torch.arange(world.TOKEN_GRID**2)
    row, col = index // world.TOKEN_GRID, index % world.TOKEN_GRID
    return torch.stack([row >= world.TOKEN_GRID // 2, col >= world.TOKEN_GRID // 2], -1).long()


def make_batch(processor, examples: list[world.Example], with_answers: bool = True) -> Batch:
    """Tokenise a list of examples; image and text-only examples may be mixed.

    With answers, each sequence is prompt + answer + end of turn (the model learns to stop);
    the answer is predicted at `answer_pos` either way.
    """
    tok = processor.tokenizer
    image_examples = [e for e in examples if e.has_image]
    end = end_of_turn_token(tok)
    texts = []
    for e in examples:
        prompt = format_prompt(processor, e.question, int(e.has_image))  # the model family's chat format
        texts.append(prompt + (f"{e.answer}{end}" if with_answers else ""))
    options = dict(return_tensors="pt", padding=True,
                   add_special_tokens=not (tok.bos_token and all(t.startswith(tok.bos_token) for t in texts)))
    # The processor wants images for image prompts only; text-only prompts are tokenised alone
    # so that both kinds can share one batch.
    if image_examples:
        enc = processor(text=texts, images=[[e.image()] if e.has_image else [] for e in examples], **options)
    else:
        enc = processor(text=texts, **options)
    enc = dict(enc)
    enc.setdefault("token_type_ids", torch.zeros_like(enc["input_ids"]))
    lengths = enc["attention_mask"].sum(1)
    answer_pos = lengths - (3 if with_answers else 1)  # ... model \n | answer <end_of_turn> (one token each)
    answer_ids = torch.tensor([tok.convert_tokens_to_ids(e.answer) for e in examples])
    if with_answers:
        got = enc["input_ids"][torch.arange(len(examples)), answer_pos + 1]
        assert torch.equal(got, answer_ids), "answer token is not where it was expected"
    labels = [token_labels(e.scene) for e in image_examples]
    shape_labels = torch.tensor(np.stack([s for s, _ in labels])) if labels else torch.zeros(0, 64, dtype=torch.long)
    color_labels = torch.tensor(np.stack([c for _, c in labels])) if labels else torch.zeros(0, 64, dtype=torch.long)
    return Batch(
        inputs=dict(enc),
        answer_ids=answer_ids,
        answer_pos=answer_pos,
        has_image=torch.tensor([e.has_image for e in examples]),
        shape_labels=shape_labels,
        color_labels=color_labels,
        examples=examples,
    )
