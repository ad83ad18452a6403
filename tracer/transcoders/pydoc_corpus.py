"""English text that every Python installation ships, as a training folder for text-only models.

`pydoc_data.topics` holds the Python reference manual's topics that `help()` shows (about
700 KB of technical prose with code samples). It is the corpus of the shipped Gemma 3 270M
transcoders because it is available offline everywhere, with no download and no licence
question, and it is ordinary written English (definitions, explanations, examples), the kind of
text a base language model is trained on, though narrower in topic than web text.

    python -m tracer.transcoders.pydoc_corpus OUT_FOLDER [--chars 400]

writes OUT_FOLDER/pydoc_topics.jsonl: one {"prompt": text} line per chunk of whole paragraphs
(at most --chars characters, longer paragraphs cut at a space), for `--data folder:OUT_FOLDER`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def chunks(max_chars: int = 400) -> list[str]:
    """The topics' paragraphs, packed into chunks of at most max_chars characters, in a fixed order."""
    from pydoc_data.topics import topics

    out: list[str] = []
    for name in sorted(topics):
        current = ""
        for para in topics[name].split("\n\n"):
            para = " ".join(para.split())  # reflowed: the manual's hard line breaks carry no meaning
            while len(para) > max_chars:
                cut = para.rfind(" ", 0, max_chars)
                cut = cut if cut > 0 else max_chars
                if current:
                    out.append(current)
                    current = ""
                out.append(para[:cut])
                para = para[cut:].lstrip()
            if not para:
                continue
            if current and len(current) + 1 + len(para) > max_chars:
                out.append(current)
                current = ""
            current = f"{current}\n{para}" if current else para
        if current:
            out.append(current)
    return out


def write_corpus(folder: str | Path, max_chars: int = 400) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pydoc_topics.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for text in chunks(max_chars):
            f.write(json.dumps({"prompt": text}) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to write pydoc_topics.jsonl into")
    parser.add_argument("--chars", type=int, default=400, help="most characters per chunk (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.chars < 20:
        parser.error("--chars must be at least 20")
    path = write_corpus(args.out, args.chars)
    n = sum(1 for _ in path.open(encoding="utf-8"))
    print(f"wrote {n} chunks to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
