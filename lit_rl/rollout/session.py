"""EngineSession: the one engine of a run, driven through its lifecycle."""

import math
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from lit_rl.rollout.engine import RolloutEngine
from lit_rl.rollout.fingerprint import FINGERPRINT_RTOL
from lit_rl.rollout.request import Generation, GenerationRequest, SamplingParams


class StaleWeightsError(RuntimeError):
    """The engine does not hold the weights it was synced to."""


class EngineSession:
    """Set up at the first generation, synced whenever the policy's weights version moved
    (after optimizer steps), awake only while generating, closed at the end of the run.

    Every generation is verified: it must come from the current version, and the fingerprint
    the engine read from the weights it sampled with must be the one the synced weights have
    (``lit_rl.rollout.fingerprint``; the engine's answer to the sync). An engine that skips a
    sync, or whose sync did not reach or corrupted its weights, is named at the step it
    happens.
    """

    def __init__(self, engine: RolloutEngine, sampling: SamplingParams) -> None:
        self.engine = engine
        self.sampling = sampling
        self.is_setup = False
        self.expected_fingerprint = float("nan")  # of the version last synced

    @contextmanager
    def awake(self, policy: nn.Module, version: int) -> Iterator[None]:
        """The engine set up, awake and synced to ``policy``'s weights at ``version`` for the
        generations inside (whole weights: under FSDP2 the caller gathers them), asleep after."""
        engine = self.engine
        if not self.is_setup:
            engine.setup(policy, self.sampling)
            self.is_setup = True
        engine.wake()
        try:
            if engine.weights_version != version:
                self.sync(policy, version)
            yield
        finally:
            engine.sleep()

    def generate(self, request: GenerationRequest, version: int) -> Generation:
        """Sample ``request`` inside ``awake``; the generation checked against the weights of
        ``version``."""
        engine = self.engine
        generation = engine.generate(request)
        if generation.weights_version != version:
            raise StaleWeightsError(
                f"{engine.name} sampled with weights version {generation.weights_version}, but "
                f"the policy is at version {version} (optimizer step): the engine serves old "
                "weights"
            )
        held, expected = generation.weights_fingerprint, self.expected_fingerprint
        sampled = generation.completion_ids.shape[0] > 0  # an empty batch read no weights
        if sampled and not math.isclose(held, expected, rel_tol=FINGERPRINT_RTOL, abs_tol=1e-12):
            raise StaleWeightsError(
                f"{engine.name} sampled with weights of fingerprint {held:.9g}, read from its "
                f"own storage, but version {version} of the policy has {expected:.9g}: the "
                "weights it samples with are not the ones it was synced to (a sync that did "
                "not reach them, or changed them)"
            )
        return generation

    def sync(self, policy: nn.Module, version: int) -> None:
        engine = self.engine
        self.expected_fingerprint = engine.sync_weights(policy, version)
        if engine.weights_version != version:
            raise StaleWeightsError(
                f"{engine.name} was synced to weights version {version} but reports version "
                f"{engine.weights_version}: the sync did not reach the engine"
            )

    def close(self) -> None:
        if self.is_setup:
            self.engine.close()
            self.is_setup = False
