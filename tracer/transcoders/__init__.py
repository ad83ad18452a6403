"""Transcoders: per-layer transcoder sets, their activation functions, loaders, training."""

from tracer.transcoders.activations import JumpReLU, ReLU, TopK
from tracer.transcoders.errors import TranscoderFormatError, TranscoderMismatchError
from tracer.transcoders.loading import default_transcoders_dir, load_transcoder_set, save_transcoder_set
from tracer.transcoders.per_layer import PerLayerTranscoder
from tracer.transcoders.replacement import record_mlps, replace_mlps
from tracer.transcoders.transcoder_set import TranscoderSet

__all__ = [
    "JumpReLU", "PerLayerTranscoder", "ReLU", "TopK", "TranscoderFormatError", "TranscoderMismatchError",
    "TranscoderSet", "default_transcoders_dir", "load_transcoder_set", "record_mlps", "replace_mlps",
    "save_transcoder_set",
]
