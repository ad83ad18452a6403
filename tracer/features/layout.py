"""File layout of a feature-examples store (the published activation-stats format).

Matches `Jingcheng/gemma3-4b-it-plt-activations` / circuit-tracer's activation-stats reader
(schema ``circuit-tracer-activation-stats-v1``); docs/feature_examples.md describes every field
and says which details were inferred rather than documented.

    <store>/
      manifest.json                 schema, model_name, processor_tokens, transcoder, layers, inputs
      stats/layer_XX.safetensors    per layer (XX = layer, two digits):
          feature_ids      (F,)   int32   features that have examples, strictly increasing
          slot_counts      (F,)   int32   examples per feature (its slots)
          top_values       (S,)   float   activation of each slot, S = sum(slot_counts),
                                          features in feature_ids order, values descending
          input_ids        (S,)   int32   the input (row of the input shards) of each slot
          token_positions  (S,)   int32   the token position of each slot within that input
          firing_counts    (F,)   int64   retained tokens at which the feature is active
        vlm-circuits extension (other readers ignore it): the feature's activation at every
        position of the slot's input, as CSR over slots:
          example_activation_offsets    (S+1,) int64
          example_activation_positions  (nnz,) int32
          example_activation_values     (nnz,) float16
      inputs/part-XXXXX.parquet     one row per input: input_id, example_id, text,
                                    image_references (list<string>), metadata_json, token_ids,
                                    token_mask (retained positions), token_type_ids (1 = image
                                    soft token), and our extra columns tokens (list<string>)
                                    and image_grids ((rows, cols) of soft tokens per image)
      images/XXXXXX.png             the input images (image_references are relative to <store>)
"""

from __future__ import annotations

SCHEMA = "circuit-tracer-activation-stats-v1"
MANIFEST = "manifest.json"
STATS_DIR = "stats"
INPUTS_DIR = "inputs"
IMAGES_DIR = "images"
EXTENSION_VERSION = 1

STAT_TENSORS = ("feature_ids", "slot_counts", "top_values", "input_ids", "token_positions", "firing_counts")
EXAMPLE_ACTS = ("example_activation_offsets", "example_activation_positions", "example_activation_values")


def layer_filename(layer: int) -> str:
    return f"{STATS_DIR}/layer_{int(layer):02d}.safetensors"


def input_filename(part: int) -> str:
    return f"{INPUTS_DIR}/part-{int(part):05d}.parquet"


def image_filename(input_id: int, k: int = 0) -> str:
    return f"{IMAGES_DIR}/{int(input_id):06d}.png" if k == 0 else f"{IMAGES_DIR}/{int(input_id):06d}_{k}.png"
