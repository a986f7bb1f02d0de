"""VLLMServerEngine's contract where no vLLM is needed (``make test``); against real servers:
tests/rollout/test_vllm_server_real.py (``make test-vllm``)."""

import importlib.util
import sys

import pytest

from lit_rl.rollout import ServerError, ServerLaunch, VLLMServerEngine
from lit_rl.rollout.vllm_server import LaunchedServer


def test_urls_and_launch_together_are_refused():
    with pytest.raises(ValueError, match="urls .* or launch .*, not both"):
        VLLMServerEngine(urls=["http://127.0.0.1:8000"], launch=ServerLaunch())
    with pytest.raises(ValueError, match="urls is empty"):
        VLLMServerEngine(urls=[])


def test_a_server_that_cannot_start_is_named_with_its_log(tmp_path):
    # This environment has no vLLM: the server process exits at once, and the error says why.
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: the server would start")
    server = LaunchedServer(ServerLaunch(python=sys.executable), str(tmp_path), [])
    with pytest.raises(
        ServerError, match=r"exited with code 1 while starting(.|\n)*No module named"
    ):
        server.wait_ready()
    server.stop()
    assert server.exit_code() == 1
