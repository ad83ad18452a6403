"""Arguments shared by the commands that run a model on a prompt."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it says something: not for None / False defaults, and
    not where the help text already explains the default in words."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action)


def add_model_arguments(p, transcoders_help: str = "transcoder set: local folder, HF repo 'org/name[@rev]' "
                        "or hf://... (default: the shipped toy set), e.g. tianhux2/gemma3-4b-it-plt") -> None:
    p.add_argument("-m", "--model", default=None,
                   help="HF model id or local folder (default: the shipped toy VLM), e.g. google/gemma-3-4b-it")
    p.add_argument("-t", "--transcoders", "--transcoder_set", dest="transcoders", default=None, help=transcoders_help)
    p.add_argument("--dtype", default="float32", help="model dtype: float32, bfloat16, float16, float64")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def add_prompt_arguments(p) -> None:
    p.add_argument("--prompt", required=True,
                   help="the question; the chat template is applied and an image marker added when an image is given")
    p.add_argument("--image", default=None, help="image file (PNG, JPEG, WebP)")
    p.add_argument("--no-chat", action="store_true", help="use the prompt as is (no chat template)")


def image_from_args(args):
    """The --image file opened and validated, or None (an ImageError says what is wrong with it)."""
    from tracer.images import open_image

    return open_image(args.image) if args.image else None
