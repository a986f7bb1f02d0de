"""The engine a run gets when its recipe names none."""

import torch

from lit_rl.rollout.engine import RolloutEngine
from lit_rl.rollout.hf_engine import HFGenerateEngine
from lit_rl.rollout.packed_engine import PackedEngine


def default_engine(device: torch.device) -> RolloutEngine:
    """The engine used where none is chosen: ``PackedEngine`` on a CPU, transformers
    ``generate`` elsewhere.

    On a CPU the packed engine decodes 1.4-1.7x faster and the default recipe learned as
    much with it (held-out accuracy over five seeds each, docs/results.md). On a GPU it ran
    1.8-2.1x faster alone but no faster than ``generate`` inside the one training run measured
    there (docs/benchmarks.md), a gap not yet explained: ``generate`` until it is (or vLLM,
    ``lit_rl.rollout.VLLMEngine``, chosen by ``class_path``).
    """
    return PackedEngine() if torch.device(device).type == "cpu" else HFGenerateEngine()
