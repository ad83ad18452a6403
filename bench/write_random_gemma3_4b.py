"""Write a full-size Gemma3-4B with random weights, and a random transcoder set for it, as files.

    python bench/write_random_gemma3_4b.py --out /tmp/r4b            # model/ and plt/ under it
    python -m tracer attribute --model /tmp/r4b/model --transcoders /tmp/r4b/plt --dtype bfloat16 ...

The model folder is a standard Hugging Face folder (config.json, model.safetensors shards,
tokenizer and processor files) and the set is in the published layout (config.yaml +
layer_{i}.safetensors, bf16), so the command line and the app load them through exactly the code
that loads google/gemma-3-4b-it and tianhux2/gemma3-4b-it-plt. The shapes are those of
bench/gpu_gemma3_4b.py; the default width, 16,384, keeps the set at 5.7 GB (the published
163,840 would be 57 GB).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_gemma3_4b import SCALES, build_model, build_processor, random_transcoders  # noqa: E402

from tracer.transcoders.loading import save_transcoder_set  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder: model/ and plt/ are written in it")
    parser.add_argument("--scale", choices=sorted(SCALES), default="gemma3-4b")
    parser.add_argument("--width", type=int, default=16_384, help="transcoder features per layer")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the random weights are drawn")
    args = parser.parse_args()
    s = dict(SCALES[args.scale], width=args.width)
    out = Path(args.out)
    start = time.perf_counter()
    processor = build_processor(s)
    model = build_model(s, processor, args.device, torch.bfloat16)
    model.save_pretrained(out / "model")
    processor.save_pretrained(out / "model")
    del model
    tset = random_transcoders(s, args.device, torch.bfloat16, host=True)
    save_transcoder_set(tset, out / "plt", model_name=str(out / "model"), num_model_layers=s["layers"])
    print(f"wrote {out / 'model'} and {out / 'plt'} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
