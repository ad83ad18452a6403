"""`python -m tracer train-plt`: train per-layer transcoders for a VLM."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tracer.commands.common import check_writable, non_negative_float, non_negative_int, positive_float, positive_int
from tracer.errors import InputError

MEMORY_HELP = """\
what fits where (training state is fp32: weights + gradients + 2 Adam moments = 16 bytes per
parameter, and a transcoder has 2 x width x d_model parameters; activation buffers hold
buffer-tokens x 2 x d_model values per layer of the group):

  model (d_model)          width     state/layer   buffer/layer (131k positions)   fits
  toy VLM (128)            2,048     8 MB          134 MB fp32                     any CPU, all 4 layers at once
  Gemma3-4B-IT (2560)      16,384    1.3 GB        1.3 GB bf16                     24 GB GPU: --group-size 2
  Gemma3-4B-IT (2560)      163,840   13.4 GB       1.3 GB bf16                     80 GB H100: --group-size 3
  (Gemma3-4B-IT itself: 8 GiB in bf16; use --dtype bfloat16 --buffer-dtype bfloat16 on a GPU.
  Measured on one H100: 28.4 GiB peak for 4 layers at width 16,384, 42.0 GiB for 2 layers at
  width 163,840, i.e. about 5 and 17 GiB per layer over the model; bench/gpu_train_plt.py)

The model itself runs without gradients (bf16 or fp32, --dtype); each forward pass stops after
the last layer of the group. On a CPU use --threads 1 when other work shares the cores.
"""


def _layers(text: str | None) -> list[int] | None:
    """'0-3', '0,5,9' or 'all' -> layer indices (None: all); a usage error for anything else."""
    if not text or text == "all":
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = (int(x) for x in part.split("-", 1))
                if a < 0 or b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            elif part:
                out.append(int(part))
                if out[-1] < 0:
                    raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give layers as 'all', '0-3' or '0,5,9' (non-negative, "
                                         "ranges low-high)") from None
    if not out:
        raise argparse.ArgumentTypeError(f"{text!r}: no layers")
    return sorted(set(out))


def register(sub) -> None:
    p = sub.add_parser(
        "train-plt", help="train per-layer transcoders (PLTs) for a VLM and write them in the published format",
        description="Train one transcoder per layer that maps the MLP input (after pre_feedforward_layernorm, "
        "mlp.hook_in) to the raw MLP output (before post_feedforward_layernorm, mlp.hook_out), at every image "
        "and text position after the chat-template prefix. TopK (ReLU then the k largest) with an AuxK "
        "dead-feature loss, or JumpReLU with an L0 penalty; unit-norm decoder rows; fp32 Adam; seeded. "
        "Activations are streamed through a bounded buffer and layers are trained in groups. Writes "
        "config.yaml + layer_{i}.safetensors (loadable by tracer and circuit-tracer) and training_log.json "
        "with a held-out report per layer (FVU, mean L0, dead features, next-token loss with the MLP replaced). "
        "Several GPUs (or CPU processes): `torchrun --standalone --nproc_per_node N -m tracer train-plt ...` splits "
        "the layer groups across the ranks (NCCL on GPUs, gloo on CPUs); each group trains exactly as in one "
        "process, so the set is the same; each rank checkpoints its groups in OUT/.ranks/ and --resume picks "
        "them up.",
        epilog=MEMORY_HELP, formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100),
    )
    p.add_argument("--out", required=True, help="output folder for the transcoder set")
    p.add_argument("--model", default=None, help="model folder or hub id (default: the shipped toy VLM)")
    p.add_argument("--data", action="append", default=None, metavar="SPEC",
                   help="data source, repeatable (mixed by weight): 'toy' (default), 'folder:PATH[,weight=W,"
                   "prompt=TEXT]' (a .jsonl of {image, prompt, answer} or bare images), "
                   "'hf:NAME[,split=train,image=image,text=question,answer=COL,config=C,weight=W]' "
                   "(needs the optional 'datasets' package)")
    p.add_argument("--layers", type=_layers, default=None,
                   help="layers to train, e.g. '0-3' or '0,5,9' (default: all)")
    p.add_argument("--group-size", type=non_negative_int, default=0, help="layers trained together per forward pass (0: all)")
    p.add_argument("--width", type=positive_int, default=1024, help="features per layer (d_transcoder; default: %(default)s)")
    p.add_argument("--activation", choices=["topk", "jumprelu"], default="topk", help="default: %(default)s")
    p.add_argument("--k", type=positive_int, default=32, help="TopK: active features per position (default: %(default)s)")
    p.add_argument("--aux-k", type=non_negative_int, default=0, help="TopK: dead features used by AuxK (0: d_model/2)")
    p.add_argument("--aux-coef", type=non_negative_float, default=1 / 32, help="TopK: AuxK loss weight (default: 1/32)")
    p.add_argument("--dead-tokens", type=positive_int, default=50_000,
                   help="a feature silent for this many training positions counts as dead (default: %(default)s)")
    p.add_argument("--no-resample", action="store_true",
                   help="do not re-initialise dead features (by default they are, during the first 80%% of steps)")
    p.add_argument("--target-l0", type=non_negative_float, default=None,
                   help="JumpReLU: mean active features per position to aim for; the L0 penalty weight adapts "
                   "during training to keep the running L0 at or below it (default: --k, i.e. 32, unless "
                   "--l0-coef is given; 0: a fixed --l0-coef)")
    p.add_argument("--l0-coef", type=non_negative_float, default=None,
                   help="JumpReLU: L0 penalty weight; fixed when given without --target-l0, otherwise the "
                   "starting weight of the controller (default: 2e-3)")
    p.add_argument("--jump-bandwidth", type=positive_float, default=0.2,
                   help="JumpReLU: straight-through kernel width, in unit-scaled pre-activations (default: %(default)s)")
    p.add_argument("--skip", action="store_true", help="also train a linear skip W_skip [d_model, d_model]")
    p.add_argument("--tokens", type=positive_int, default=1_000_000, help="training positions per layer (default: %(default)s)")
    p.add_argument("--batch-tokens", type=positive_int, default=1024, help="positions per optimizer step (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (default: %(default)s)")
    p.add_argument("--warmup-steps", type=non_negative_int, default=100,
                   help="linear learning-rate warm-up steps (default: %(default)s)")
    p.add_argument("--buffer-tokens", type=positive_int, default=131_072,
                   help="positions per layer buffered and shuffled at a time (default: %(default)s)")
    p.add_argument("--buffer-dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="dtype of the buffered activations (bfloat16 halves the buffer's memory; default: %(default)s)")
    p.add_argument("--model-batch", type=positive_int, default=32, help="prompts per model forward pass")
    p.add_argument("--max-length", type=positive_int, default=None, help="skip prompts longer than this many tokens")
    p.add_argument("--eval-examples", type=positive_int, default=600, help="held-out prompts for the final report")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out report")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the initial weights and the data order (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="device for the model and the training, e.g. cuda")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="model dtype (transcoders always train in fp32)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="keep layers already in --out and train the rest")
    p.add_argument("--overwrite", action="store_true", help="train a new set over one already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    p.set_defaults(handler=_run)


def _run(args) -> int:
    out = Path(args.out)
    if not args.resume and not args.overwrite and ((out / "config.yaml").exists() or any(out.glob("layer_*.safetensors"))):
        raise InputError(f"{out} already holds a transcoder set: pass --resume to keep its layers and train the "
                         "rest, --overwrite to train a new set over it, or choose another --out")
    if args.activation == "topk" and args.k > args.width:
        raise InputError(f"--k {args.k} is more than --width {args.width}: TopK keeps k of the width's features")
    check_writable(args.out, folder=True)
    import torch

    from tracer.models.loading import FAST_ATTENTION, load_vlm
    from tracer.transcoders.sources import make_source
    from tracer.transcoders.training import PLTTrainConfig, train_plt

    steps = max(1, args.tokens // args.batch_tokens)
    if steps <= args.warmup_steps:
        print(f"warning: {steps} optimizer steps (--tokens {args.tokens} / --batch-tokens {args.batch_tokens}) do not "
              f"get past the {args.warmup_steps}-step learning-rate warm-up: the rate never reaches --lr "
              f"(lower --warmup-steps or train on more --tokens)", file=sys.stderr)
    torch.set_num_threads(max(1, args.threads))
    device = _init_distributed(args.device)
    source = make_source(args.data)
    model, processor = load_vlm(args.model, dtype=getattr(torch, args.dtype), device=device,
                                attn_implementation=FAST_ATTENTION)
    cfg = PLTTrainConfig(
        layers=args.layers, group_size=args.group_size, width=args.width, activation=args.activation,
        k=args.k, aux_k=args.aux_k, aux_coef=args.aux_coef, dead_tokens=args.dead_tokens, resample=not args.no_resample,
        l0_coef=2e-3 if args.l0_coef is None else args.l0_coef,
        target_l0=(args.target_l0 if args.target_l0 is not None else 0.0 if args.l0_coef is not None else float(args.k)),
        jump_bandwidth=args.jump_bandwidth,
        skip=args.skip, tokens=args.tokens, batch_tokens=args.batch_tokens, lr=args.lr,
        warmup_steps=args.warmup_steps, buffer_tokens=args.buffer_tokens, buffer_dtype=args.buffer_dtype,
        model_batch=args.model_batch, max_length=args.max_length, eval_examples=args.eval_examples,
        seed=args.seed, device=device, threads=args.threads,
    )
    try:
        train_plt(model, processor, source, args.out, cfg, model_ref=args.model, progress=not args.no_progress,
                  resume=args.resume, evaluate=not args.no_eval)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"saved the transcoder set to {args.out}")
    return 0


def _init_distributed(device: str) -> str:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on GPUs, gloo on CPUs) and
    return this rank's device (cuda:LOCAL_RANK for a cuda device); else the device as given."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return device
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device
