"""Train the toy VLM from scratch on the shapes world (`python -m tracer toy train`).

Recipe: AdamW with warm-up and cosine decay; the loss is the answer token (plus the
<end_of_turn> after it, so that generation stops), plus an auxiliary per-soft-token loss that
asks a linear probe to read each image token's shape and colour. The auxiliary loss is what
makes shape-colour binding learnable at this size: without it the vision tower tends to encode
"there is red" and "there is a circle" in different tokens and the language model cannot bind
them. The probe is discarded; the saved model is a plain Hugging Face VLM of the chosen family
(Gemma3 by default; LLaVA and Qwen2.5-VL with --family, tracer.toy.families).

Batches are a pure function of the step number, so a run resumes exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tracer.errors import InputError
from tracer.models.base import get_adapter
from tracer.toy import data, world
from tracer.toy.evaluate import evaluate_model
from tracer.toy.families import build_family_model
from tracer.toy.model import ToyModelSpec

CHECKPOINT = "train_state.pt"


@dataclass
class TrainConfig:
    steps: int = 12000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup: int = 500
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    aux_weight: float = 0.5
    aux_position: bool = True  # the probe also reads each object token's half (top/bottom, left/right)
    eot_weight: float = 0.2
    seed: int = 0
    eval_every: int = 1000
    eval_examples: int = 120  # per question type, during training
    checkpoint_every: int = 500
    num_workers: int = 0
    device: str = "cpu"
    threads: int = 1
    family: str = "gemma3"  # tracer.toy.families: gemma3, llava, qwen2_5_vl
    init_vision_from: str | None = None  # a trained VLM folder whose vision tower starts this one
    init_language_from: str | None = None  # a trained VLM folder whose language model starts this one
    init_from: str | None = None  # a trained toy of this family to go on training (fine-tuning)
    question_mix: dict[str, int] | None = None  # relative weight of each question type (default: 1 each)
    spec: ToyModelSpec = field(default_factory=ToyModelSpec)


class _BatchStream(torch.utils.data.IterableDataset):
    """Batches for steps start..end; worker w of W builds the steps congruent to w mod W."""

    def __init__(self, processor, cfg: TrainConfig, start: int):
        self.processor, self.cfg, self.start = processor, cfg, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for step in range(self.start + wid, self.cfg.steps, nw):
            yield step, batch_for_step(self.processor, self.cfg, step)


def probe_width(cfg: TrainConfig) -> int:
    """Outputs of the auxiliary probe: shape classes, colour classes, then two binary halves."""
    return len(data.SHAPE_CLASSES) + len(data.COLOR_CLASSES) + (4 if cfg.aux_position else 0)


def question_cycle(mix: dict[str, int] | None) -> list[str]:
    """The question types training examples cycle through: each type as often as its weight in
    `mix` (types it leaves out weigh 1), in the world's order; no mix is one of each."""
    mix = mix or {}
    unknown = sorted(set(mix) - set(world.QUESTION_TYPES))
    if unknown:
        raise InputError(f"unknown question type(s) {', '.join(unknown)}; choose from {', '.join(world.QUESTION_TYPES)}")
    if any(not isinstance(w, int) or w < 0 for w in mix.values()):
        raise InputError(f"question weights must be whole numbers >= 0, got {mix}")
    cycle = [q for q in world.QUESTION_TYPES for _ in range(mix.get(q, 1))]
    if not cycle:
        raise InputError("every question type has weight 0: nothing to train on")
    return cycle


def batch_for_step(processor, cfg: TrainConfig, step: int) -> data.Batch:
    first = step * cfg.batch_size
    cycle = question_cycle(cfg.question_mix)
    examples = [world.make_example("train", first + i, cfg.seed, question_type=cycle[(first + i) % len(cycle)])
                for i in range(cfg.batch_size)]
    return data.make_batch(processor, examples)


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def training_loss(model, probe: torch.nn.Linear, batch: data.Batch, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    adapter = get_adapter(model)
    device = adapter.device
    inputs = adapter.model_inputs(batch.inputs)
    n = len(batch.examples)
    rows = torch.arange(n, device=device)
    aux = torch.zeros((), device=device)
    entering = {}

    def keep(embeddings):
        entering["emb"] = embeddings

    # the image soft tokens as they enter the language model (every family puts them there in place
    # of its image placeholder tokens), with their gradient
    hook = adapter.register_embedding_hook(keep)
    try:
        out = model(**inputs)
    finally:
        hook.remove()
    if "pixel_values" in inputs:
        is_image = inputs["input_ids"] == adapter.image_token_id
        soft = entering["emb"][is_image].view(-1, world.TOKEN_GRID ** 2, adapter.d_model)  # (n_images, 64, d)
        logits_aux = probe(soft)
        n_shape = len(data.SHAPE_CLASSES)
        n_color = len(data.COLOR_CLASSES)
        aux = F.cross_entropy(logits_aux[..., :n_shape].flatten(0, 1), batch.shape_labels.to(device).flatten()) + \
            F.cross_entropy(logits_aux[..., n_shape:n_shape + n_color].flatten(0, 1),
                            batch.color_labels.to(device).flatten())
        if cfg.aux_position:  # two binary heads after shape and colour: bottom half? right half?
            # on object tokens only: background tokens keep their position easily and would dominate
            # the loss while the objects' tokens (what position questions ask about) lose it
            on_object = batch.shape_labels.to(device) > 0
            halves = data.half_labels().to(device).expand(len(soft), -1, -1)[on_object]
            for j in range(2):
                start = n_shape + n_color + 2 * j
                aux = aux + F.cross_entropy(logits_aux[..., start:start + 2][on_object], halves[:, j])
    pos = batch.answer_pos.to(device)
    answer_logits = out.logits[rows, pos].float()
    answer_ids = batch.answer_ids.to(device)
    answer_loss = F.cross_entropy(answer_logits, answer_ids)
    eot_ids = inputs["input_ids"][rows, pos + 2]
    eot_loss = F.cross_entropy(out.logits[rows, pos + 1].float(), eot_ids)
    loss = answer_loss + cfg.eot_weight * eot_loss + cfg.aux_weight * aux
    acc = (answer_logits.argmax(-1) == answer_ids).float().mean()
    return loss, {"loss": loss.item(), "answer_loss": answer_loss.item(), "aux": aux.item(), "acc": acc.item()}


def check_out_folder(out: Path, cfg: TrainConfig, overwrite: bool = False) -> None:
    """Refuse to start from step 0 over a finished run (its checkpoint is gone, its model would be
    overwritten), and a resume whose checkpoint is already at or past the requested steps."""
    state_path = out / CHECKPOINT
    if state_path.exists():
        step = int(torch.load(state_path, map_location="cpu", weights_only=True)["step"])
        if step >= cfg.steps:
            raise InputError(f"{out} holds a checkpoint at step {step}, not before --steps {cfg.steps}: "
                             f"nothing to train (raise --steps to continue it)")
        return
    if (out / "model.safetensors").exists() and not overwrite:
        done = ""
        log = out / "training_log.json"
        if log.exists():
            try:
                evals = json.loads(log.read_text()).get("eval") or []
                done = f" ({evals[-1]['step']} steps)" if evals else ""
            except (ValueError, KeyError, TypeError):
                pass
        raise InputError(f"{out} already holds a trained toy VLM{done} and no checkpoint to resume: choose another "
                         f"--out, or pass --overwrite to train a new one from step 0 over it")


def train(out_dir: str | Path, cfg: TrainConfig | None = None, progress: bool = True, overwrite: bool = False) -> Path:
    """Train (or resume from its checkpoint) the toy VLM into out_dir and save it as a Hugging
    Face folder. A folder with a finished model is refused unless overwrite."""
    cfg = cfg or TrainConfig()
    out = Path(out_dir)
    check_out_folder(out, cfg, overwrite)
    if cfg.warmup >= cfg.steps:
        print(f"warning: the learning-rate warm-up ({cfg.warmup} steps) is not shorter than the run ({cfg.steps} "
              f"steps): the rate never reaches its peak (lower --warmup)", file=sys.stderr)
    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if cfg.init_from and (cfg.init_vision_from or cfg.init_language_from):
        raise InputError("--init-from starts the whole model: it does not combine with --init-vision-from or "
                         "--init-language-from")
    if cfg.init_from:
        model, processor = load_source(cfg.init_from)
        if get_adapter(model).family != cfg.family:
            raise InputError(f"--init-from {cfg.init_from} is a {get_adapter(model).family} model, not {cfg.family} "
                             f"(pass --family {get_adapter(model).family})")
        if get_adapter(model).d_model != cfg.spec.hidden_size:
            raise InputError(f"--init-from {cfg.init_from}: its width {get_adapter(model).d_model} is not the toy "
                             f"spec's {cfg.spec.hidden_size}")
    elif cfg.init_vision_from:
        source = load_vision_source(cfg.init_vision_from)
        options = {"vision_tower": source_tower_kind(source, cfg.family)} if cfg.family == "llava" else {}
        model, processor = build_family_model(cfg.family, cfg.seed, cfg.spec, **options)
        if not (out / CHECKPOINT).exists():  # a resumed run's checkpoint holds the tower already
            copy_vision_tower(source, model, cfg.init_vision_from)
        del source
    else:
        model, processor = build_family_model(cfg.family, cfg.seed, cfg.spec)
    if cfg.init_language_from and not (out / CHECKPOINT).exists():
        source, source_processor = load_source(cfg.init_language_from)
        copy_language_model(source, source_processor.tokenizer, model, processor.tokenizer, cfg.init_language_from)
        del source
    out.mkdir(parents=True, exist_ok=True)  # only once the model could be built (bad options leave nothing)
    model.to(device).train()
    torch.manual_seed(cfg.seed + 1)
    probe = torch.nn.Linear(cfg.spec.hidden_size, probe_width(cfg)).to(device)
    params = list(model.parameters()) + list(probe.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )
    log: dict = {"config": asdict(cfg), "train": [], "eval": []}
    if cfg.init_from:  # a fine-tuned toy keeps the history of the run it started from
        log["started_from"] = {"model": str(cfg.init_from), "log": _read_log(cfg.init_from)}
    start = 0
    state_path = out / CHECKPOINT
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state["probe"]["weight"].shape[0] != probe_width(cfg):
            raise InputError(f"{state_path} was trained with{'out' if cfg.aux_position else ''} the position probe: "
                             f"resume it with{'' if cfg.aux_position else 'out'} --no-aux-position")
        model.load_state_dict(state["model"])
        probe.load_state_dict(state["probe"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        log = json.loads((out / "training_log.json").read_text())
        # a resume may change the settings (e.g. raise --steps): keep what each leg ran with
        log.setdefault("resumed", []).append({"step": start, "config": asdict(cfg)})
        print(f"resuming at step {start}")

    stream = torch.utils.data.DataLoader(
        _BatchStream(processor, cfg, start), batch_size=None, num_workers=cfg.num_workers,
        persistent_workers=False, prefetch_factor=4 if cfg.num_workers else None,
    )
    # Workers interleave steps, so reorder what arrives into step order.
    pending: dict[int, data.Batch] = {}
    iterator = iter(stream)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="toy train", disable=not progress)
    t0 = time.time()
    running: dict[str, float] = {}
    for step in bar:
        while step not in pending:
            s, b = next(iterator)
            pending[s] = b
        batch = pending.pop(step)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        loss, stats = training_loss(model, probe, batch, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        for k, v in stats.items():
            running[k] = 0.98 * running.get(k, v) + 0.02 * v
        bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()})
        if (step + 1) % 100 == 0:
            log["train"].append({"step": step + 1, "elapsed_s": round(time.time() - t0, 1), **running})
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            acc = evaluate_model(model, processor, cfg.eval_examples, batch_size=128, progress=False)
            model.train()
            log["eval"].append({"step": step + 1, **acc})
            tqdm.write(f"step {step + 1}: " + "  ".join(f"{k} {v:.3f}" for k, v in acc.items()))
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_state(state_path, model, probe, opt, step + 1)
            save_toy_model(model, processor, out)  # a usable folder at every checkpoint
            (out / "training_log.json").write_text(json.dumps(log, indent=1))

    model.eval()
    save_toy_model(model, processor, out)
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
    state_path.unlink(missing_ok=True)  # the finished folder holds only the model
    return out


def _read_log(model: str) -> dict | None:
    """A trained toy's training_log.json (None when it has none or it does not parse)."""
    from tracer.models.loading import resolve_model_ref

    try:
        return json.loads((Path(resolve_model_ref(model)) / "training_log.json").read_text())
    except (OSError, ValueError):
        return None


def load_source(folder: str):
    """(model, processor): a trained VLM whose weights start part of a new toy (float32, CPU)."""
    from tracer.models.loading import load_vlm

    return load_vlm(folder, attn_implementation="sdpa")


def load_vision_source(folder: str):
    """The trained VLM whose vision tower starts a new toy."""
    return load_source(folder)[0]


def source_tower_kind(source, family: str) -> str:
    """The LLaVA toy's tower kind that can take the source's tower: its config's model type."""

    kind = getattr(source.config, "vision_config", None)
    kind = getattr(kind, "model_type", "")
    towers = {"siglip_vision_model": "siglip", "clip_vision_model": "clip"}
    if kind not in towers:
        raise InputError(f"--init-vision-from: a {family} toy cannot start from a {kind or 'text-only'} vision "
                         f"tower (it takes a SigLIP or CLIP tower)")
    return towers[kind]


def copy_vision_tower(source, model, name: str) -> None:
    """Copy the source VLM's vision tower weights into the new model's tower (same architecture
    and sizes, else a clear error). The projector and the language model keep their fresh start."""
    src, dst = get_adapter(source).vision_tower, get_adapter(model).vision_tower
    if src is None or dst is None or type(src) is not type(dst):
        raise InputError(f"--init-vision-from {name}: its vision tower ({type(src).__name__}) is not the kind this "
                         f"{get_adapter(model).family} toy uses ({type(dst).__name__})")
    theirs, ours = src.state_dict(), dst.state_dict()
    wrong = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
    if wrong:
        raise InputError(f"--init-vision-from {name}: its vision tower has other sizes than the toy's "
                         f"({len(wrong)} tensors differ, e.g. {wrong[0]})")
    with torch.no_grad():
        dst.load_state_dict({k: theirs[k] for k in ours}, strict=True)


def copy_language_model(source, source_tokenizer, model, tokenizer, name: str) -> None:
    """Start the new model's language model from the source's: every decoder weight the source
    has, of the same shape (else a clear error); weights only the new family has (Qwen2's q/k/v
    biases) start at zero, so the copy computes what the source did. Token embedding and
    unembedding rows are matched by the token's text, the end-of-turn and padding tokens by
    their role; tokens the source lacks (the family's own markers) keep their fresh start. The
    vision tower and the projector are left alone."""

    src_lm, dst_lm = get_adapter(source).language_model, get_adapter(model).language_model
    theirs, ours = src_lm.state_dict(), dst_lm.state_dict()
    embed = get_adapter(model).architecture.embed_tokens + ".weight"
    bad = [k for k in theirs if k != embed and (k not in ours or ours[k].shape != theirs[k].shape)]
    if bad or embed not in theirs:
        raise InputError(f"--init-language-from {name}: its language model does not fit this {get_adapter(model).family}"
                         f" toy's ({len(bad)} tensors missing or of other sizes, e.g. {(bad or [embed])[0]})")
    extra = [k for k in ours if k not in theirs]
    if any(not k.endswith(".bias") for k in extra):
        raise InputError(f"--init-language-from {name}: this toy's language model has weights the source lacks "
                         f"(e.g. {next(k for k in extra if not k.endswith('.bias'))})")
    src_vocab, dst_vocab = source_tokenizer.get_vocab(), tokenizer.get_vocab()
    pairs = {i: src_vocab[t] for t, i in dst_vocab.items() if t in src_vocab}
    for role in ("eos_token_id", "pad_token_id"):
        a, b = getattr(tokenizer, role), getattr(source_tokenizer, role)
        if a is not None and b is not None:
            pairs[a] = b
    dst_ids, src_ids = torch.tensor(list(pairs)), torch.tensor(list(pairs.values()))
    with torch.no_grad():
        for k, v in ours.items():
            if k == embed:
                v[dst_ids] = theirs[k][src_ids].to(v.dtype)
            elif k in theirs:
                v.copy_(theirs[k])
            else:
                v.zero_()
        head_src, head_dst = source.get_output_embeddings().weight, model.get_output_embeddings().weight
        head_dst[dst_ids] = head_src[src_ids].to(head_dst.dtype)


def _save_state(path: Path, model, probe, opt, step: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "probe": probe.state_dict(), "optimizer": opt.state_dict(),
                "step": step}, tmp)
    tmp.replace(path)


LOADER_STATE = ("is_local", "local_files_only")  # how a processor was loaded, not what it is


def save_toy_model(model, processor, out: Path) -> None:
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # a fine-tuned toy's processor was loaded from a folder: keep that out of the files it ships
    config = Path(out) / "tokenizer_config.json"
    if config.exists():
        settings = json.loads(config.read_text())
        if any(k in settings for k in LOADER_STATE):
            config.write_text(json.dumps({k: v for k, v in settings.items() if k not in LOADER_STATE}, indent=2) + "\n")
