"""Every rollout's randomness as a function of the checkpoint: the run's base seed, the stream,
the rollout's index and the process's rank."""

import random

import numpy as np
import torch

TRAINING, EVALUATION = 0, 1  # the two streams of seeds: rollouts, and evaluations


def seed_rollout(base_seed: int, index: int, rank: int, stream: int = TRAINING) -> None:
    """Seed every RNG a rollout may draw from (torch on the CPU and every CUDA device, numpy,
    Python) from the run's base seed, the stream (training rollouts or evaluations), the
    rollout's index (an evaluation's: the optimizer step) and the process's rank.

    Why per rollout and not one RNG state carried along: a rollout's randomness is then a
    function of what the checkpoint holds (the base seed and the rollout count), however
    many random numbers anything else drew before it (evaluation, a reward, a resumed run's
    start-up); each process samples its own prompts with its own stream.
    """
    entropy = [base_seed, stream, index, rank]
    seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
    torch.manual_seed(seed)  # the CPU generator and every CUDA device's
    np.random.seed(seed % 2**32)
    random.seed(seed)
