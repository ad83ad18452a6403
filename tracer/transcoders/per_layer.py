"""Per-layer transcoder (PLT): reads one layer's MLP input, writes that layer's MLP output.

Tensor layout (the published format, docs/design.md §5):

- ``W_enc [d_transcoder, d_model]``, ``b_enc [d_transcoder]``
- ``W_dec [d_transcoder, d_model]``, ``b_dec [d_model]``
- ``W_skip [d_model, d_model]`` (optional). Convention (as circuit-tracer's
  ``compute_skip``): ``skip(x) = x @ W_skip.T``, i.e. ``W_skip[out, in]`` like the weight of
  ``torch.nn.Linear(d_model, d_model, bias=False)``.

``pre = x @ W_enc.T + b_enc``; ``acts = activation(pre)``; ``out = acts @ W_dec + b_dec + skip(x)``.

The encoder and the decoder can each be *lazy*: the matrix then stays in its safetensors file
and only the rows that are asked for are read (``decoder_rows`` / ``encoder_rows``), or, for the
encoder, read chunk by chunk on every encode. Nothing big is cached.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tracer.transcoders.activations import JumpReLU, ReLU, TopK

# Upper bound on the elements of one [rows, features] block built while encoding (64 MB of fp32).
DEFAULT_BLOCK_ELEMENTS = 1 << 24


class LazyRows:
    """A [n_rows, d] tensor that stays in a safetensors file; rows are read on demand."""

    def __init__(self, path: str | Path, key: str, shape: tuple[int, ...], dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu"):
        self.path = str(path)
        self.key = key
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype  # None: as stored
        self.device = torch.device(device)

    def _convert(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device=self.device, dtype=self.dtype or t.dtype)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows `index` (any order, repeats allowed), shape [len(index), d]."""
        from safetensors import safe_open

        index = torch.as_tensor(index, dtype=torch.long).reshape(-1).cpu()
        if index.numel() == 0:
            return self._convert(torch.zeros(0, *self.shape[1:]))
        if int(index.min()) < 0 or int(index.max()) >= self.shape[0]:
            raise IndexError(f"row index out of range [0, {self.shape[0]}) for {self.key} in {self.path}")
        unique, inverse = torch.unique(index, sorted=True, return_inverse=True)
        with safe_open(self.path, framework="pt", device="cpu") as f:
            block = f.get_slice(self.key)[unique.tolist()]
        return self._convert(block)[inverse.to(self.device)]

    def chunks(self, chunk_rows: int):
        """Yield (start, rows[start:start+chunk_rows]) over the whole matrix."""
        from safetensors import safe_open

        with safe_open(self.path, framework="pt", device="cpu") as f:
            sl = f.get_slice(self.key)
            for start in range(0, self.shape[0], chunk_rows):
                yield start, self._convert(sl[start:start + chunk_rows])

    def full(self) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.path, framework="pt", device="cpu") as f:
            return self._convert(f.get_tensor(self.key))

    def __repr__(self) -> str:
        return f"LazyRows({self.key!r} {list(self.shape)} in {self.path})"


def _param(t: torch.Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t, requires_grad=False)


class PerLayerTranscoder(nn.Module):
    """One layer's transcoder. See the module docstring for the maths and the layout."""

    def __init__(self, layer: int, W_enc: torch.Tensor | LazyRows, b_enc: torch.Tensor,
                 W_dec: torch.Tensor | LazyRows, b_dec: torch.Tensor, activation: nn.Module | None = None,
                 W_skip: torch.Tensor | None = None, source: str | None = None):
        super().__init__()
        self.layer = int(layer)
        self.source = source  # the safetensors file it came from, if any
        d_tc, d_model = int(b_enc.shape[0]), int(b_dec.shape[0])
        self.d_transcoder = d_tc
        self.d_model = d_model
        for name, t, shape in (("W_enc", W_enc, (d_tc, d_model)), ("W_dec", W_dec, (d_tc, d_model)),
                               ("W_skip", W_skip, (d_model, d_model))):
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"layer {layer}: {name} has shape {list(t.shape)}, expected {list(shape)}")
        self.b_enc = _param(b_enc)
        self.b_dec = _param(b_dec)
        self._lazy_enc = W_enc if isinstance(W_enc, LazyRows) else None
        self._lazy_dec = W_dec if isinstance(W_dec, LazyRows) else None
        if self._lazy_enc is None:
            self.W_enc = _param(W_enc)
        if self._lazy_dec is None:
            self.W_dec = _param(W_dec)
        self.W_skip = _param(W_skip)
        self.activation = activation if activation is not None else ReLU()
        self.block_elements = DEFAULT_BLOCK_ELEMENTS
        self._sync_lazy()

    # -- construction helpers ----------------------------------------------------------------
    @classmethod
    def init_random(cls, layer: int, d_model: int, d_transcoder: int, activation: nn.Module | None = None,
                    skip: bool = False, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32) -> "PerLayerTranscoder":
        """Unit-norm random decoder rows, encoder = decoder (the usual TopK initialisation)."""
        W_dec = torch.randn(d_transcoder, d_model, generator=generator, dtype=torch.float32)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        return cls(
            layer, W_dec.clone().to(dtype), torch.zeros(d_transcoder, dtype=dtype), W_dec.to(dtype),
            torch.zeros(d_model, dtype=dtype), activation,
            torch.zeros(d_model, d_model, dtype=dtype) if skip else None,
        )

    # -- properties --------------------------------------------------------------------------
    @property
    def lazy_encoder(self) -> bool:
        return self._lazy_enc is not None

    @property
    def lazy_decoder(self) -> bool:
        return self._lazy_dec is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.b_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.b_enc.device

    @property
    def has_skip(self) -> bool:
        return self.W_skip is not None

    def __getattr__(self, name):
        # A lazy matrix read whole when someone asks for it by name (not cached).
        if name == "W_enc" and self.__dict__.get("_lazy_enc") is not None:
            return self._lazy_enc.full()
        if name == "W_dec" and self.__dict__.get("_lazy_dec") is not None:
            return self._lazy_dec.full()
        return super().__getattr__(name)

    def _sync_lazy(self) -> None:
        for lazy in (self._lazy_enc, self._lazy_dec):
            if lazy is not None:
                lazy.dtype, lazy.device = self.dtype, self.device

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._sync_lazy()
        return out

    def extra_repr(self) -> str:
        lazy = [n for n, on in (("encoder", self.lazy_encoder), ("decoder", self.lazy_decoder)) if on]
        return (f"layer={self.layer}, d_model={self.d_model}, d_transcoder={self.d_transcoder}, "
                f"skip={self.has_skip}, lazy={'+'.join(lazy) or 'no'}")

    # -- rows --------------------------------------------------------------------------------
    def decoder_rows(self, features: torch.Tensor) -> torch.Tensor:
        """W_dec[features] as [n, d_model]; reads only those rows when the decoder is lazy."""
        features = torch.as_tensor(features, dtype=torch.long)
        if self._lazy_dec is not None:
            return self._lazy_dec.rows(features)
        return self.W_dec[features.to(self.device)]

    def encoder_rows(self, features: torch.Tensor) -> torch.Tensor:
        """W_enc[features] as [n, d_model]; reads only those rows when the encoder is lazy."""
        features = torch.as_tensor(features, dtype=torch.long)
        if self._lazy_enc is not None:
            return self._lazy_enc.rows(features)
        return self.W_enc[features.to(self.device)]

    # -- encoding ----------------------------------------------------------------------------
    def _feature_chunk(self, n_rows: int) -> int:
        """Features per encoder chunk: the [rows, chunk] block and the [chunk, d_model] encoder
        slice each stay within block_elements."""
        return max(1, min(self.d_transcoder, self.block_elements // max(1, n_rows, self.d_model)))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W_enc.T + b_enc, [..., d_transcoder]."""
        x = x.to(self.dtype)
        if self._lazy_enc is None:
            return torch.nn.functional.linear(x, self.W_enc, self.b_enc)
        flat = x.reshape(-1, self.d_model)
        out = torch.empty(flat.shape[0], self.d_transcoder, dtype=self.dtype, device=x.device)
        for start, W in self._lazy_enc.chunks(self._feature_chunk(flat.shape[0])):
            stop = start + W.shape[0]
            out[:, start:stop] = torch.nn.functional.linear(flat, W.to(x.device), self.b_enc[start:stop])
        return out.reshape(*x.shape[:-1], self.d_transcoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """activation(pre_activations(x)): dense [..., d_transcoder]."""
        return self.activation(self.pre_activations(x))

    def encode_sparse(self, x: torch.Tensor, block_elements: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The non-zero activations of x ([..., d_model], flattened to rows): (rows, features, values).

        Rows index x.reshape(-1, d_model). Memory stays bounded by `block_elements` elements
        of pre-activations at a time (rows are processed in chunks; with a lazy encoder the
        encoder is read in feature chunks too).
        """
        block = block_elements or self.block_elements
        flat = x.reshape(-1, self.d_model).to(self.dtype)
        n = flat.shape[0]
        rows_l, feats_l, vals_l = [], [], []
        if self._lazy_enc is None:
            row_chunk = max(1, block // max(1, self.d_transcoder))
            for r0 in range(0, n, row_chunk):
                pre = torch.nn.functional.linear(flat[r0:r0 + row_chunk], self.W_enc, self.b_enc)
                r, f, v = self.activation.sparse(pre)
                rows_l.append(r + r0), feats_l.append(f), vals_l.append(v)
        else:
            r, f, v = self._encode_sparse_lazy(flat, block)
            rows_l, feats_l, vals_l = [r], [f], [v]
        if not rows_l:
            empty = torch.zeros(0, dtype=torch.long, device=flat.device)
            return empty, empty.clone(), torch.zeros(0, dtype=self.dtype, device=flat.device)
        return torch.cat(rows_l), torch.cat(feats_l), torch.cat(vals_l)

    def _encode_sparse_lazy(self, flat: torch.Tensor, block: int):
        """Lazy encoder: one pass over the encoder file per call, feature chunk by feature chunk."""
        n = flat.shape[0]
        act = self.activation
        if not isinstance(act, (ReLU, JumpReLU, TopK)):  # unknown activation: needs whole rows
            pre = self.pre_activations(flat)
            return act.sparse(pre)
        chunk = self._feature_chunk(n)
        rows_l, feats_l, vals_l = [], [], []
        best_v = best_i = None
        for start, W in self._lazy_enc.chunks(chunk):
            stop = start + W.shape[0]
            pre = torch.nn.functional.linear(flat, W.to(flat.device), self.b_enc[start:stop])
            if isinstance(act, TopK):
                v, i = torch.topk(torch.relu(pre), min(act.k, pre.shape[1]), dim=-1)
                i = i + start
                if best_v is not None:
                    v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
                    v, sel = torch.topk(v, min(act.k, v.shape[1]), dim=-1)
                    i = torch.gather(i, 1, sel)
                best_v, best_i = v, i
                continue
            if isinstance(act, JumpReLU):
                thr = act.threshold.to(device=pre.device, dtype=pre.dtype)
                thr = thr[start:stop] if thr.dim() else thr
                a = pre * (pre > thr).to(pre.dtype)
            else:
                a = torch.relu(pre)
            r, f = torch.nonzero(a, as_tuple=True)
            rows_l.append(r), feats_l.append(f + start), vals_l.append(a[r, f])
        if isinstance(act, TopK):
            rows = torch.arange(n, device=flat.device).unsqueeze(1).expand_as(best_i)
            keep = best_v != 0
            rows, feats, vals = rows[keep], best_i[keep], best_v[keep]
        else:
            rows, feats, vals = torch.cat(rows_l), torch.cat(feats_l), torch.cat(vals_l)
        order = torch.argsort(rows * self.d_transcoder + feats)
        return rows[order], feats[order], vals[order]

    # -- decoding ----------------------------------------------------------------------------
    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """acts @ W_dec + b_dec for dense acts [..., d_transcoder] (no skip)."""
        acts = acts.to(self.dtype)
        if self._lazy_dec is None:
            return acts @ self.W_dec + self.b_dec
        flat = acts.reshape(-1, self.d_transcoder)
        cols = torch.nonzero((flat != 0).any(0), as_tuple=True)[0]
        out = flat[:, cols] @ self.decoder_rows(cols).to(acts.device) + self.b_dec
        return out.reshape(*acts.shape[:-1], self.d_model)

    def decode_sparse(self, rows: torch.Tensor, features: torch.Tensor, values: torch.Tensor,
                      n_rows: int) -> torch.Tensor:
        """The decoded output [n_rows, d_model] of sparse activations (no skip)."""
        out = torch.zeros(n_rows, self.d_model, dtype=self.dtype, device=self.device)
        if features.numel():
            vecs = self.decoder_rows(features).to(self.device) * values.to(self.dtype).unsqueeze(1)
            out = out.index_add(0, rows.to(self.device), vecs)
        return out + self.b_dec

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W_skip.T (circuit-tracer's convention), or zeros when there is no skip."""
        x = x.to(self.dtype)
        if self.W_skip is None:
            return torch.zeros_like(x)
        return x @ self.W_skip.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)) + skip(x): the transcoder's replacement of the MLP output."""
        out = self.decode(self.encode(x))
        if self.W_skip is not None:
            out = out + self.skip(x)
        return out

    # -- files -------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """The published per-layer tensors (lazy matrices are read whole)."""
        out = {
            "W_enc": self.W_enc.detach(), "W_dec": self.W_dec.detach(),
            "b_enc": self.b_enc.detach(), "b_dec": self.b_dec.detach(),
        }
        if self.W_skip is not None:
            out["W_skip"] = self.W_skip.detach()
        if isinstance(self.activation, JumpReLU):
            thr = self.activation.threshold.detach()
            out["activation_function.threshold"] = thr.expand(self.d_transcoder) if thr.dim() == 0 else thr
        return out


__all__ = ["LazyRows", "PerLayerTranscoder"]
