"""The batch file: one JSON object per line.

Fields (only the prompt is required):

    id              unique name of the example (default: its line number, "line-0007")
    prompt          the question (`question` is accepted too, as `toy sample` writes it)
    image           image file, relative to the batch file's folder (or absolute)
    targets         list of target specs ("red", "#123", "red - blue"); default: salient logits
    contrast        one "A - B" spec, added to the targets
    answer          the expected answer (summary: correct or not)
    question_type   a grouping column for the summary
    evidence_tokens image soft-token indices (row-major in the grid) the answer depends on:
                    the ground truth the summary measures circuits against

`python -m tracer toy sample` writes such a file (examples.jsonl) with ground truth.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tracer.errors import InputError

MAX_LINE = 1_000_000  # characters in one line of the batch file
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass
class BatchExample:
    id: str
    prompt: str
    image: str | None = None  # absolute path
    targets: list[str] = field(default_factory=list)
    answer: str | None = None
    question_type: str | None = None
    evidence_tokens: list[int] | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def read_examples(path: str | Path) -> list[BatchExample]:
    """Parse and check the whole file before any work starts: a bad line is an InputError that
    names its line number."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"batch file {path} does not exist")
    examples: list[BatchExample] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if len(line) > MAX_LINE:
                raise InputError(f"{path}:{number}: line longer than {MAX_LINE} characters")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise InputError(f"{path}:{number}: not JSON ({err})") from None
            example = _example(record, number, f"{path}:{number}", path.parent)
            if example.id in seen:
                raise InputError(f"{path}:{number}: id {example.id!r} appears twice")
            seen.add(example.id)
            examples.append(example)
    if not examples:
        raise InputError(f"batch file {path} holds no examples")
    return examples


def _example(record, number: int, where: str, folder: Path) -> BatchExample:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object")
    prompt = record.get("prompt", record.get("question"))
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{where}: needs a non-empty 'prompt' (or 'question')")
    example_id = record.get("id", f"line-{number:04d}")
    if not isinstance(example_id, str) or not _ID.match(example_id):
        raise InputError(f"{where}: id {example_id!r} must be 1-100 letters, digits, '_', '-' or '.' "
                         "(it names the graph file)")
    image = record.get("image")
    if image is not None:
        if not isinstance(image, str) or not image:
            raise InputError(f"{where}: 'image' must be a file name")
        image = str((folder / image).resolve()) if not Path(image).is_absolute() else image
    targets = record.get("targets") or []
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not all(isinstance(t, str) and t.strip() for t in targets):
        raise InputError(f"{where}: 'targets' must be a list of target specs")
    contrast = record.get("contrast")
    if contrast is not None:
        if not isinstance(contrast, str) or "-" not in contrast:
            raise InputError(f"{where}: 'contrast' must be one 'A - B' spec")
        targets = [*targets, contrast]
    evidence = record.get("evidence_tokens")
    if evidence is not None and (not isinstance(evidence, list)
                                 or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                            for t in evidence)):
        raise InputError(f"{where}: 'evidence_tokens' must be a list of non-negative integers")
    answer = record.get("answer")
    qtype = record.get("question_type")
    return BatchExample(example_id, prompt, image, list(targets),
                        answer if isinstance(answer, str) else None, qtype if isinstance(qtype, str) else None,
                        evidence)
