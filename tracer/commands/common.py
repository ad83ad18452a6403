"""Arguments shared by the commands that run a model on a prompt."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

from tracer.toy.shipped import SHIPPED_TOYS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it says something: not for None / False defaults, and
    not where the help text already explains the default in words."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action)


def add_model_arguments(p, transcoders_help: str = "transcoder set: local folder, HF repo 'org/name[@rev]' "
                        "or hf://... (default: a shipped toy's own set), e.g. tianhux2/gemma3-4b-it-plt") -> None:
    p.add_argument("-m", "--model", default=None,
                   help=f"HF model id, local folder or shipped toy ({', '.join(SHIPPED_TOYS)}; default: toy), e.g. "
                        "google/gemma-3-4b-it")
    p.add_argument("-t", "--transcoders", "--transcoder_set", dest="transcoders", default=None, help=transcoders_help)
    p.add_argument("--dtype", default="float32", help="model dtype: float32, bfloat16, float16, float64")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def add_prompt_arguments(p, required: bool = True) -> None:
    p.add_argument("--prompt", required=required,
                   help="the question; the chat template is applied and an image marker added when an image is given")
    p.add_argument("--image", action="append", default=None,
                   help="image file (PNG, JPEG, WebP); repeat it for several images, in the order of the prompt's "
                        "image markers (without markers the images go before the question)")
    p.add_argument("--no-chat", action="store_true", help="use the prompt as is (no chat template)")


def image_from_args(args):
    """The --image file(s) opened and validated: None, one image, or a list for several (an
    ImageError says what is wrong with a file)."""
    from tracer.images import open_image

    paths = [args.image] if isinstance(args.image, str) else list(args.image or [])
    images = [open_image(path) for path in paths]
    return None if not images else images[0] if len(images) == 1 else images


# -- option types: a bad number is an argparse error (usage + one line, exit 2), never a traceback


def _number(text: str, kind=float) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_int_or_all(text: str) -> int | None:
    """A count, or 'all' (None): no limit."""
    if text.strip().lower() == "all":
        return None
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (or 'all'), got {value}")
    return value


def share(text: str) -> float:
    """A fraction in [0, 1] (pruning thresholds)."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value:g}")
    return value


def probability(text: str) -> float:
    """A probability in (0, 1] (a share of the next-token probability mass)."""
    value = _number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {value:g}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value:g}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value:g}")
    return value


def port(text: str) -> int:
    value = _number(text, int)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1..65535, got {value}")
    return value


def add_attribution_arguments(p, max_feature_nodes: int = 7500) -> None:
    """The attribution settings shared by `attribute` and `batch` (circuit-tracer's spellings,
    with dashes accepted too)."""
    p.add_argument("--max_n_logits", "--max-n-logits", type=positive_int, default=10,
                   help="at most this many salient logits as targets")
    p.add_argument("--desired_logit_prob", "--desired-logit-prob", type=probability, default=0.95,
                   help="salient logits until their probabilities add up to this (above 0, at most 1)")
    p.add_argument("--max_feature_nodes", "--max-feature-nodes", type=positive_int_or_all, default=max_feature_nodes,
                   help="explore at most this many features, most influential first ('all': every active one)")
    p.add_argument("--batch_size", "--batch-size", type=positive_int, default=256, help="backward lanes per batch")


# -- outputs: checked before any work, so a run never fails after computing (or half writing)


def check_writable(path: str | Path, folder: bool = False) -> Path:
    """The output path, or an InputError if it cannot be written: a file where a folder must be,
    a folder where the file must be, no permission. Missing folders are fine (they are created)."""
    from tracer.errors import InputError

    path = Path(path).expanduser()
    target = path if folder else path.parent
    if not folder and path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name")
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a file, not a folder")
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot write {path}: {existing} is a file, not a folder")
    try:  # the one honest test (permissions, read-only mounts, /proc): create a file there
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".tracer-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(f"cannot write {path}: {existing} is not writable ({err.strerror or err})") from None
    return path


def check_graph_output(path: str | Path) -> Path:
    """The graph file `save_graph` will write for `path` (suffix added), checked as above."""
    from tracer.graph.storage import SUFFIX

    path = Path(path)
    return check_writable(path if path.name.endswith(SUFFIX) else path.with_name(path.name + SUFFIX))
