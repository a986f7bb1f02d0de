"""The reads of vLLM's internals (``lit_rl.rollout.vllm_internals``): a vLLM outside the tested
range is named in a warning, and a read that fails names the module and the tested version.
The reads themselves run against the real vLLM in tests/rollout/test_vllm_real.py."""

import logging
from types import SimpleNamespace

import pytest

from lit_rl.rollout.vllm_internals import check_version, held_dense_fingerprint


@pytest.mark.parametrize(
    ("version", "warned"),
    [("0.32.0", False), ("0.32.1+cpu", False), ("0.31.2", True), ("0.33.0", True)],
)
def test_a_vllm_outside_the_tested_range_is_named_in_a_warning(version, warned, caplog):
    with caplog.at_level(logging.WARNING, logger="lit_rl.rollout.vllm_internals"):
        check_version(SimpleNamespace(__version__=version))
    assert (f"vLLM {version} is untested" in caplog.text) == warned
    if warned:
        assert "tested on 0.32" in caplog.text


def test_a_read_that_fails_names_the_module_and_the_tested_version():
    class MovedLLM:  # a vLLM whose apply_model no longer returns one value per worker
        def apply_model(self, func):
            return []

    with pytest.raises(RuntimeError, match=r"lit_rl.rollout.vllm_internals, vLLM 0.32"):
        held_dense_fingerprint(MovedLLM())
