"""VLLMServerEngine against real vLLM OpenAI servers (the CPU build, on loopback): ``make
test-vllm`` runs these (``-m vllm``). The tiny float32 Llama of test_vllm_real on both sides,
so the servers' logprobs must be the trainer's to numerical noise. One server is shared by the
tests that reach it by URL; the launch tests start (and kill) their own."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch
from lightning.pytorch import Callback
from peft import LoraConfig, get_peft_model
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import LlamaForCausalLM

from lit_rl.callbacks import RolloutCallback
from lit_rl.cli import run_cli
from lit_rl.modules import GRPOModule
from lit_rl.rollout import (
    GenerationRequest,
    SamplingParams,
    ServerError,
    ServerLaunch,
    VLLMServerEngine,
)
from lit_rl.rollout.vllm_server import LaunchedServer
from tests.conftest import TINY_LORA, fit_rollouts, tiny_module_args
from tests.rollout.test_vllm_real import STRICT, model_dir
from tests.test_cli import TINY, _scalars_and_text

__all__ = ["model_dir"]
pytestmark = pytest.mark.vllm
SERVER_ARGUMENTS = [
    *("--dtype", "float32", "--max-model-len", "512", "--seed", "0"),
    *("--logprobs-mode", "processed_logprobs", "--kv-cache-memory-bytes", str(64 * 2**20)),
    *("--enable-lora", "--max-lora-rank", "8"),
]


@pytest.fixture(scope="module", autouse=True)
def real_vllm():
    return pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def server(model_dir):
    launched = LaunchedServer(ServerLaunch(), str(model_dir), SERVER_ARGUMENTS)
    launched.wait_ready()
    yield launched
    launched.stop()


class SyncState(Callback):
    """After every step: the engine-trainer mismatch, the sync probe's gap, the folders."""

    def __init__(self) -> None:
        self.k3: list[float] = []
        self.probe_gaps: list[float] = []
        self.folders: list[list[str]] = []
        self.staleness: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.handoff.trained is None:  # rollouts ahead: the first batch only submits
            return
        engine = pl_module.sampler.engine
        self.k3.append(trainer.callback_metrics["rollout/logprob_mismatch_k3"].item())
        self.probe_gaps.append(engine.last_probe_gap)
        self.staleness.append(int(trainer.callback_metrics["rollout/staleness"]))
        self.folders.append(sorted(path.name for path in engine.weights_dir.iterdir()))


def _fit(model_dir, engine, steps=3, **module_args):
    torch.manual_seed(0)
    module = GRPOModule(**tiny_module_args(model_dir, **{"learning_rate": 5e-2, **module_args}))
    state = SyncState()
    trainer = fit_rollouts(module, model_dir, steps, [state], engine=engine, logprob_check=STRICT)
    return trainer, module, state


def served_models(url: str) -> list[str]:
    return sorted(model["id"] for model in requests.get(f"{url}/v1/models").json()["data"])


def test_a_lora_policy_trains_on_a_servers_samples_its_adapter_synced_and_checked(
    model_dir, server
):
    trainer, module, state = _fit(model_dir, VLLMServerEngine(urls=[server.url]))
    assert trainer.global_step == 3
    # The servers' logprobs of their own samples are the trainer's (STRICT stops past 1e-5),
    # and so are the sync probe's after every sync.
    assert max(state.k3) < 1e-6
    assert max(state.probe_gaps) < 1e-4
    # One adapter per version, the previous one unloaded: the last sync was of version 2.
    assert served_models(server.url) == sorted([str(model_dir), "policy-v2"])
    assert state.folders == [["policy-v0"], ["policy-v1"], ["policy-v2"]]


def test_the_server_samples_the_next_batch_during_the_update(model_dir, server):
    module = GRPOModule(**tiny_module_args(model_dir, learning_rate=5e-2))
    state = SyncState()
    rollout = RolloutCallback(STRICT, max_staleness=1)
    torch.manual_seed(0)
    fit_rollouts(
        module, model_dir, 3, [state], VLLMServerEngine(urls=[server.url]), rollout=rollout
    )
    # Every sync still checked by the probe; the trained-on rollouts one version behind
    # after the first update (their mismatch is the update's drift: logged, not judged).
    assert max(state.probe_gaps) < 1e-4
    assert state.staleness == [0, 1, 1]
    assert state.k3[0] < 1e-6 and max(state.k3[1:]) > 1e-6


def test_full_weights_are_reloaded_through_the_servers_routes(model_dir, server):
    _, _, state = _fit(model_dir, VLLMServerEngine(urls=[server.url]), lora=None, steps=2)
    assert max(state.k3) < 1e-6 and max(state.probe_gaps) < 1e-4


class CorruptedSync(VLLMServerEngine):
    """Hands the server an adapter that is not the policy's (as a broken transfer would)."""

    def _load_adapter(self, policy, version):
        saved = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_B" in n}
        with torch.no_grad():
            for name, parameter in policy.named_parameters():
                if name in saved:
                    parameter.add_(0.5)
        try:
            return super()._load_adapter(policy, version)
        finally:
            with torch.no_grad():
                for name, parameter in policy.named_parameters():
                    if name in saved:
                        parameter.copy_(saved[name])


class SkippedSync(VLLMServerEngine):
    """Claims a sync it never made (as a route that silently failed would)."""

    def _load_adapter(self, policy, version):
        return f"policy-v{version}-never-loaded"


def test_a_corrupted_sync_stops_the_run_by_name(model_dir, server):
    with pytest.raises(ServerError, match=r"sync probe .* does not compute the policy's weights"):
        _fit(model_dir, CorruptedSync(urls=[server.url]), steps=1)


def test_a_skipped_sync_stops_the_run_by_name(model_dir, server):
    with pytest.raises(ServerError, match=r"refused /v1/completions .*never-loaded"):
        _fit(model_dir, SkippedSync(urls=[server.url]), steps=1)


def _policy_and_request(model_dir):
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    policy = get_peft_model(model, LoraConfig(**TINY_LORA))
    sampling = SamplingParams(max_new_tokens=8, temperature=1.0)
    request = GenerationRequest(
        torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long), 2, sampling, 0, (1,)
    )
    return policy, sampling, request


def test_a_launched_server_that_dies_stops_the_run_with_its_exit_code(model_dir):
    policy, sampling, request = _policy_and_request(model_dir)
    engine = VLLMServerEngine(launch=ServerLaunch(ready_timeout_s=300), max_prompt_length=64)
    engine.setup(policy, sampling)
    try:
        (launched,) = engine.launched
        engine.sync_weights(policy, 0)
        assert engine.generate(request).completion_ids.shape[0] == 2
        os.killpg(launched.process.pid, signal.SIGKILL)
        launched.process.wait(timeout=30)
        with pytest.raises(ServerError, match=r"cannot be reached .* exited with code -9"):
            engine.generate(request)
    finally:
        engine.close()
    assert launched.exit_code() is not None and engine.urls == []


LAUNCH_AND_WAIT = """
import sys, time
from lit_rl.rollout import ServerLaunch
from lit_rl.rollout.vllm_server import LaunchedServer
server = LaunchedServer(ServerLaunch(), sys.argv[1], sys.argv[2:])
server.wait_ready()
print(server.process.pid, flush=True)
time.sleep(600)
"""


def test_a_server_does_not_outlive_a_killed_training_process(model_dir):
    trainer = subprocess.Popen(
        [sys.executable, "-c", LAUNCH_AND_WAIT, str(model_dir), *SERVER_ARGUMENTS],
        stdout=subprocess.PIPE,
        text=True,
    )
    server_pid = int(trainer.stdout.readline())  # its process group: the server's engines too
    assert _group_running(server_pid)
    trainer.kill()  # SIGKILL: no atexit, no finally
    trainer.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _group_running(server_pid):
        time.sleep(0.5)
    assert not _group_running(server_pid), "the server outlived the process that started it"


def _group_running(group: int) -> bool:
    """Whether any process of the group runs (a zombie, exited but not reaped, does not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def _servers_running() -> set[int]:
    """The vLLM OpenAI servers running on this machine, by pid."""
    pids = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"vllm.entrypoints.openai.api_server" in cmdline.read_bytes():
                pids.add(int(cmdline.parent.name))
        except OSError:
            continue
    return {pid for pid in pids if _group_running(pid)}


def test_the_server_recipe_trains_logs_its_sync_check_and_leaves_no_server(model_dir, tmp_path):
    before = _servers_running()
    run_cli(
        [
            "fit",
            "--config",
            "recipes/grpo_math_server.yaml",
            f"--model.init_args.model={model_dir}",
            f"--data.init_args.tokenizer={model_dir}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--model.init_args.dtype=float32",
            *TINY,
            "--trainer.max_steps=3",
        ]
    )
    run = tmp_path / "grpo_math_server" / "version_0"
    scalars, _ = _scalars_and_text(run)
    assert {"rollout/sync_probe_gap", "rollout/logprob_mismatch_k3", "train/loss"} <= scalars
    # max_staleness 1: the first update trains on what was sampled before it, the next ones on
    # what the server sampled during the update before.
    events = EventAccumulator(str(run))
    events.Reload()
    assert [e.value for e in events.Scalars("rollout/staleness")] == [0.0, 1.0, 1.0]
    assert _servers_running() == before  # the run's own server is gone
