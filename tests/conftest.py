import os

# Tests never reach a hub: everything they load is shipped in the repo or written by the test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def toy_vlm():
    """The shipped toy VLM and its processor, loaded once (float32, eager attention)."""
    from tracer.models.loading import load_vlm

    return load_vlm(None)
