"""EngineSession: the one engine of a run, driven through its lifecycle."""

import math

from torch import nn

from lit_rl.rollout.engine import RolloutEngine, trained_weights, weights_fingerprint
from lit_rl.rollout.request import Generation, GenerationRequest, SamplingParams


class StaleWeightsError(RuntimeError):
    """The engine does not hold the weights it was synced to."""


class EngineSession:
    """Set up at the first generation, synced whenever the policy's weights version moved
    (after optimizer steps), awake only while generating, closed at the end of the run.

    Every sync is verified: the engine must report the version it was given and the
    fingerprint of the policy's trained weights; every generation must come from the
    current version. An engine that skips a sync is named at the step it happens.
    """

    def __init__(self, engine: RolloutEngine, sampling: SamplingParams) -> None:
        self.engine = engine
        self.sampling = sampling
        self.is_setup = False

    def generate(self, policy: nn.Module, request: GenerationRequest, version: int) -> Generation:
        """Sample ``request`` with ``policy``'s weights at ``version`` (whole weights: under
        FSDP2 the caller gathers them for the call)."""
        engine = self.engine
        if not self.is_setup:
            engine.setup(policy, self.sampling)
            self.is_setup = True
        engine.wake()
        try:
            if engine.weights_version != version:
                self.sync(policy, version)
            generation = engine.generate(request)
        finally:
            engine.sleep()
        if generation.weights_version != version:
            raise StaleWeightsError(
                f"{engine.name} sampled with weights version {generation.weights_version}, but "
                f"the policy is at version {version} (optimizer step): the engine serves old "
                "weights"
            )
        return generation

    def sync(self, policy: nn.Module, version: int) -> None:
        engine = self.engine
        reported = engine.sync_weights(policy, version)
        expected = weights_fingerprint(trained_weights(policy))
        if engine.weights_version != version or not math.isclose(
            reported, expected, rel_tol=1e-9, abs_tol=1e-9
        ):
            raise StaleWeightsError(
                f"{engine.name} was synced to weights version {version} (fingerprint "
                f"{expected:.9g}) but reports version {engine.weights_version} with fingerprint "
                f"{reported:.9g}: the sync did not reach the engine"
            )

    def close(self) -> None:
        if self.is_setup:
            self.engine.close()
            self.is_setup = False
