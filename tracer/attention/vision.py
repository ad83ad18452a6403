"""Vision attention maps: for each image soft token, where in the image its information comes from.

A family's adapter says how its projector reads the vision tower (`VisionReadout`) and runs the
tower keeping its patterns (`vision_tower_states`). Gemma3: a SigLIP ViT over a P x P patch grid,
k x k average pooling, an RMSNorm and a projection. LLaVA: one soft token per patch of a CLIP or
SigLIP tower. Qwen2.5-VL: a windowed ViT over an image-dependent patch grid whose merger folds
each 2x2 block of patches into a soft token. Two maps per soft token, both on the patch grid:

* **Attention rollout** (Abnar & Zuidema 2020) over the last N vision layers: each layer's eager
  attention pattern, averaged over heads, with the identity mixed in for the residual stream,
  A'_l = (1 - alpha) * mean_h A_l + alpha * I, and R = A'_L @ A'_{L-1} @ ... @ A'_{L-N+1}. Row
  i of R says how much output patch i draws on each input patch. A soft token reads its k x k
  patches, so its map is the mean of their rows. Each map sums to 1.
* **Hidden-state similarity**: the cosine similarity between the soft token's pooled vision
  vector (the mean of its k x k patches' hidden states at the layer the projector reads) and
  every patch's hidden state at a chosen vision layer (default: the final one).

`upsample` maps a patch-grid array to image pixels for overlays. The processor resizes the whole
image to the vision tower's input size, so the patch grid covers the whole original image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tracer.interventions.common import as_bundle, prompt_inputs
from tracer.graph.graph import grids_text
from tracer.models.base import PromptInputs, VisionMapsUnavailable, image_grids, load_image


@dataclass
class VisionAttentionMaps:
    """Per image and soft token, maps on the patch grid.

    rollout, similarity: (n_images, n_tokens, patch rows, patch cols) float32, soft tokens in
    row-major order on the (rows, cols) token grid (token t is cell (t // cols, t % cols)),
    patches likewise. patches_per_side / tokens_per_side: the side of a square grid, else 0.
    """

    rollout: np.ndarray
    similarity: np.ndarray
    patches_per_side: int
    tokens_per_side: int
    kernel: int  # patches per soft token along each side
    input_size: tuple[int, int]  # (H, W) of the vision tower's input
    rollout_layers: list[int] = field(default_factory=list)
    identity_weight: float = 0.5
    similarity_layer: int = -1
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # original (H, W) per image
    token_grid: tuple[int, int] = ()  # (rows, cols) of soft tokens; () = tokens_per_side square

    @property
    def n_images(self) -> int:
        return int(self.rollout.shape[0])

    @property
    def patch_grid(self) -> tuple[int, int]:
        return int(self.rollout.shape[-2]), int(self.rollout.shape[-1])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(int(x) for x in self.token_grid) if self.token_grid else (self.tokens_per_side,) * 2

    def token_index(self, row: int, col: int) -> int:
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexError(f"cell ({row}, {col}) outside the {rows}x{cols} grid")
        return row * cols + col

    def for_cell(self, image: int, row: int, col: int, kind: str = "rollout") -> np.ndarray:
        """Patch-grid map of one soft token; kind "rollout" or "similarity"."""
        maps = {"rollout": self.rollout, "similarity": self.similarity}[kind]
        return maps[image, self.token_index(row, col)]

    def for_position(self, prompt: PromptInputs, position: int, kind: str = "rollout") -> np.ndarray:
        """Patch-grid map of the soft token at a sequence position of `prompt`."""
        positions = list(prompt.image_positions)
        if position not in positions:
            raise ValueError(f"position {position} is not an image soft token")
        image, row, col = prompt.image_grid[positions.index(position)]
        return self.for_cell(image, row, col, kind)

    def token_cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """The soft token's own patches on the patch grid: (row0, col0, row1, col1), exclusive end."""
        k = self.kernel
        return row * k, col * k, (row + 1) * k, (col + 1) * k

    def save_npz(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path, rollout=self.rollout, similarity=self.similarity,
            meta=np.array([self.patches_per_side, self.tokens_per_side, self.kernel, *self.input_size,
                           self.similarity_layer], dtype=np.int64),
            rollout_layers=np.asarray(self.rollout_layers, np.int64), identity_weight=np.float64(self.identity_weight),
            image_sizes=np.asarray(self.image_sizes, np.int64).reshape(-1, 2),
            token_grid=np.asarray(self.grid, np.int64),
        )
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load_npz(cls, path: str | Path) -> "VisionAttentionMaps":
        with np.load(path, allow_pickle=False) as z:
            m = z["meta"].tolist()
            return cls(z["rollout"], z["similarity"], m[0], m[1], m[2], (m[3], m[4]),
                       z["rollout_layers"].tolist(), float(z["identity_weight"]), m[5],
                       [tuple(s) for s in z["image_sizes"].tolist()],
                       tuple(z["token_grid"].tolist()) if "token_grid" in z.files else ())


def upsample(grid_map: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """A patch-grid map resized to image pixels (H, W) for an overlay; mode "nearest"
    (blocky, one value per patch) or "bilinear"."""
    t = torch.as_tensor(np.asarray(grid_map, dtype=np.float32))[None, None]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    out = torch.nn.functional.interpolate(t, size=tuple(int(s) for s in size), mode=mode, **kwargs)
    return out[0, 0].numpy()


def _pixel_inputs(bundle, image_or_prompt) -> tuple[dict, list[tuple[int, int]]]:
    """The image processor's output (pixel_values and, for dynamic-resolution families, the image
    grids) and each original image's (H, W)."""
    if isinstance(image_or_prompt, PromptInputs):
        if image_or_prompt.inputs.get("pixel_values") is None:
            raise ValueError("the prompt has no image")
        return dict(image_or_prompt.inputs), [(im.height, im.width) for im in image_or_prompt.images]
    images = image_or_prompt if isinstance(image_or_prompt, (list, tuple)) else [image_or_prompt]
    images = [load_image(im) for im in images]
    sizes = [(im.height, im.width) for im in images]
    ip = getattr(bundle.processor, "image_processor", None)
    if ip is None:
        return dict(prompt_inputs(bundle, "", images).inputs), sizes
    return dict(ip(images=images, return_tensors="pt")), sizes


@torch.no_grad()
def vision_attention_maps(session, image_or_prompt, last_layers: int | None = None, identity_weight: float = 0.5,
                          similarity_layer: int = -1) -> VisionAttentionMaps:
    """Rollout and similarity maps for every soft token of every image.

    session: TracingSession / Bundle / (model, processor).
    image_or_prompt: an image (path or PIL), a list of images, or PromptInputs (its pixel values).
        All images must share one grid of soft tokens (always so for fixed-resolution families).
    last_layers: roll out over this many last vision layers (default: all of them).
    identity_weight: alpha, the weight of the identity (residual) mixed into each layer's pattern.
    similarity_layer: the vision hidden state compared with the pooled soft-token vector:
        -1 = the final output the projector reads, 0 = the patch embeddings,
        i in 1..n_layers = the output of encoder layer i - 1.
    """
    bundle = as_bundle(session)
    adapter = bundle.adapter
    if adapter.vision_tower is None:
        raise VisionMapsUnavailable(f"{adapter.family} models have no vision tower")
    if not hasattr(adapter, "image_grids"):
        adapter.vision_readout()  # a family without maps refuses before any work
    pixel_inputs, sizes = _pixel_inputs(bundle, image_or_prompt)
    grids = image_grids(adapter, pixel_inputs, len(sizes), adapter.tokens_per_image)
    if len(set(grids)) > 1:
        raise VisionMapsUnavailable(f"vision attention maps need images of one grid; these have {grids_text(grids)}")
    if isinstance(image_or_prompt, PromptInputs) and image_or_prompt.image_grids and \
            list(image_or_prompt.image_grids) != grids:
        raise ValueError(f"the prompt's image grids {grids_text(image_or_prompt.image_grids)} are not the "
                         f"projector's {grids_text(grids)}")
    readout = adapter.vision_readout(grids[0])
    read = readout.layers_read
    last_layers = read if last_layers is None else int(last_layers)
    if not 1 <= last_layers <= read:
        raise ValueError(f"last_layers must be in 1..{read} (the vision layers the projector reads)")
    rolled = list(range(read - last_layers, read))
    states = adapter.vision_tower_states(pixel_inputs, rolled)
    final = states.final
    B, N, D = final.shape
    n_layers = len(states.hidden) - 1
    if readout.pool.shape[1] != N:
        raise ValueError(f"the vision tower output has {N} tokens, but the {adapter.family} projector reads "
                         f"{readout.pool.shape[1]}")
    if not readout.from_final:
        final = states.hidden[read]
    # float64 where cheap (exact maps on small towers), float32 for big patch grids
    cdt = torch.float64 if N <= 1024 else torch.float32
    eye = torch.eye(N, dtype=cdt, device=final.device)
    pool = readout.pool.to(final.device, cdt)  # (T, N): soft token t from the tower's tokens
    # rollout rows of the soft tokens: pool @ R with R = A'_last @ ... @ A'_first, last layer first
    M = pool.expand(B, -1, -1)
    for i in reversed(rolled):
        A = states.patterns[i].to(cdt).mean(1)  # heads averaged, (B, N, N)
        A = (1.0 - identity_weight) * A + identity_weight * eye
        A = A / A.sum(-1, keepdim=True)
        M = M @ A
    patches = readout.patch_tokens.to(final.device)
    rollout = M[:, :, patches]  # (B, T, patches): on the patch grid (a CLS token's share is left out)
    vec = pool @ final.to(cdt)  # (B, T, D): the pooled vectors the projector reads
    if similarity_layer == -1:
        ref = final
    elif 0 <= similarity_layer <= n_layers:
        ref = states.hidden[similarity_layer]
    else:
        raise ValueError(f"similarity_layer must be -1 (final output) or 0..{n_layers}")
    ref = ref.to(cdt)[:, patches]
    sim = torch.nn.functional.normalize(vec, dim=-1) @ torch.nn.functional.normalize(ref, dim=-1).transpose(1, 2)
    rows, cols = readout.token_grid
    pr, pc = readout.patch_grid
    pixel_values = pixel_inputs["pixel_values"]
    input_size = tuple(pixel_values.shape[-2:]) if pixel_values.ndim == 4 else (pr * readout.kernel, pc * readout.kernel)
    return VisionAttentionMaps(
        rollout=rollout.reshape(B, rows * cols, pr, pc).float().cpu().numpy(),
        similarity=sim.reshape(B, rows * cols, pr, pc).float().cpu().numpy(),
        patches_per_side=pr if pr == pc else 0, tokens_per_side=rows if rows == cols else 0, kernel=readout.kernel,
        input_size=input_size, rollout_layers=rolled, identity_weight=float(identity_weight),
        similarity_layer=int(similarity_layer), image_sizes=sizes, token_grid=(rows, cols),
    )
