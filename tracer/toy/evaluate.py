"""Held-out answer accuracy of a VLM on the shapes world, per question type."""

from __future__ import annotations

from collections import defaultdict

import torch
from tqdm.auto import tqdm

from tracer.toy import data, world


@torch.no_grad()
def predict(model, processor, examples: list[world.Example]) -> list[str]:
    """Greedy next token after each example's prompt, as a word."""
    from tracer.models.base import get_adapter

    adapter = get_adapter(model)
    device = adapter.device
    batch = data.make_batch(processor, examples, with_answers=False)
    inputs = adapter.model_inputs(batch.inputs)
    logits = model(**inputs).logits
    rows = torch.arange(len(examples), device=device)
    ids = logits[rows, batch.answer_pos.to(device)].argmax(-1).tolist()
    return processor.tokenizer.convert_ids_to_tokens(ids)


def evaluate_model(model, processor, per_type: int = 500, batch_size: int = 128, seed: int = 0,
                   progress: bool = True, split: str = "heldout") -> dict[str, float]:
    """Accuracy per question type on `per_type` held-out examples of each type."""
    correct: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    examples = [
        world.make_example(split, i, seed, qtype) for qtype in world.QUESTION_TYPES for i in range(per_type)
    ]
    for start in tqdm(range(0, len(examples), batch_size), desc="eval", disable=not progress):
        chunk = examples[start:start + batch_size]
        for example, guess in zip(chunk, predict(model, processor, chunk)):
            total[example.question_type] += 1
            correct[example.question_type] += int(guess == example.answer)
    return {q: correct[q] / total[q] for q in world.QUESTION_TYPES}


ACCURACY_BAR = 0.95  # what every shipped toy must reach on every question type


def format_table(accuracy: dict[str, float], n: int, bar: float = ACCURACY_BAR) -> str:
    lines = [f"{'question type':<14} {'accuracy':>9}  {'n':>5}  ", "-" * 36]
    for qtype, acc in accuracy.items():
        mark = "ok" if acc >= bar else "BELOW"
        lines.append(f"{qtype:<14} {acc * 100:8.1f}%  {n:>5}  {mark}")
    mean = sum(accuracy.values()) / len(accuracy)
    lines.append("-" * 36)
    lines.append(f"{'mean':<14} {mean * 100:8.1f}%")
    return "\n".join(lines)
