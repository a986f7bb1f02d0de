"""VLLMServerEngine: generation on vLLM OpenAI servers beside training, through public routes.

The trainer needs no vLLM: it talks HTTP to one or more ``vllm serve`` processes, which it
starts itself on this machine (``launch``) or which run elsewhere (``urls``; on a cluster, the
servers' own nodes). Token ids in, token ids and the sampler's logprobs out
(``/v1/completions`` with ``return_tokens_as_token_ids``); the G samples of a prompt are one
request, and the prompts' requests are in flight together, spread over the servers.

Weights move through vLLM's public routes only: a LoRA policy's adapter is saved to a folder
both sides read and loaded with ``/v1/load_lora_adapter`` under a name per version (requests
name it, so the server reports the version that answered); full weights (and the base beneath
an adapter, at the first sync and whenever it moved) are saved as safetensors and reloaded in
place with ``/collective_rpc reload_weights`` (the server runs with ``VLLM_SERVER_DEV_MODE=1``;
no NCCL needed, so it works on a CPU and across nodes with a shared folder). Every sync is
checked: each server samples a fixed probe prompt with the new weights and its logprobs of its
own tokens must be the trainer's for that version (``probe_tolerance``); a server that did not
load them, or loaded others, stops the run by name. A server that dies, refuses or does not
answer within ``request_timeout_s`` stops the run by name, never a silent stall.
"""

import math
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
import torch
from peft import PeftModel
from safetensors.torch import save_file
from torch import nn

from lit_rl.models.lora import base_state_dict
from lit_rl.rollout.engine import NOT_SYNCED
from lit_rl.rollout.fingerprint import policy_fingerprint
from lit_rl.rollout.request import Generation, GenerationRequest, SamplingParams
from lit_rl.rollout.vllm_engine import (
    base_checksum,
    check_prompt_lengths,
    check_servable,
    kv_cache_bytes,
)
from lit_rl.rollout.vllm_internals import LORA_RANKS
from lit_rl.rollout.vllm_server import LaunchedServer, ServerError, ServerLaunch

PROBE_PROMPT_TOKENS, PROBE_SAMPLED_TOKENS, PROBE_SEED = 16, 16, 20261206
# Mean |log pi_server - log pi_trainer| over the probe's sampled tokens above which a sync
# failed, by the precision the policy computes in. Measured on the embedded model (LoRA, vLLM
# 0.32 CPU): 6-8e-6 in float32, 0.042-0.054 in bf16 (the probe's tokens are unlikely ones,
# where bf16 rounds most); an adapter off by 0.5 in B is nats away. A version one step old is
# within the noise in bf16: the version each answer names is checked for that.
PROBE_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.25, torch.float16: 0.1}


class VLLMServerEngine:
    """Generation on vLLM servers (``lit_rl.rollout.server_engine``).

    Args:
        urls: base URLs of running servers (``http://host:port``), serving the policy's base
            model with ``--enable-lora`` for a LoRA policy and ``VLLM_SERVER_DEV_MODE=1``;
            ``None``: the run launches its own (``launch``).
        launch: how to start the run's own server on 127.0.0.1 (``ServerLaunch``).
        max_prompt_length: the longest prompt in tokens (as ``VLLMEngine``'s): a launched
            server's context is this plus ``max_completion_length``; a running one's is checked.
        weights_dir: the folder adapters and weights are written to for the servers to read:
            on a cluster, one both sides see; ``None``: a temporary folder (this machine).
        request_timeout_s: the longest a request may take (a whole batch's completions).
        probe_tolerance: the sync check's tolerance (``None``: by the policy's precision).
    """

    name = "VLLMServerEngine"

    def __init__(
        self,
        urls: list[str] | None = None,
        launch: ServerLaunch | None = None,
        max_prompt_length: int = 256,
        weights_dir: str | None = None,
        request_timeout_s: float = 900.0,
        probe_tolerance: float | None = None,
    ) -> None:
        if urls is not None and launch is not None:
            raise ValueError(
                "VLLMServerEngine takes urls (servers already running) or launch (the run "
                "starts its own), not both"
            )
        if urls is not None and not urls:
            raise ValueError("VLLMServerEngine: urls is empty; give at least one server's URL")
        self.urls = [url.rstrip("/") for url in urls] if urls else []
        self.launch = launch if urls is None else None
        self.max_prompt_length = max_prompt_length
        self.weights_root = Path(weights_dir) if weights_dir else None
        self.request_timeout_s = request_timeout_s
        self.probe_tolerance = probe_tolerance
        self.weights_version = NOT_SYNCED
        self.dtype = torch.float32  # the policy's, set at setup: the servers compute in it
        self.launched: list[LaunchedServer] = []
        self.weights_dir: Path | None = None
        self.uses_adapter = False
        self.base_model = ""  # the name the servers serve the base model under
        self.served_name = ""  # the name requests address: the current adapter's, or the base
        self.fingerprints: dict[str, tuple[int, float]] = {}  # served name -> version, print
        self.base_checksum: float | None = None
        self.last_probe_gap = float("nan")  # the last sync check's largest gap over servers

    # ---- lifecycle --------------------------------------------------------------------------
    def setup(self, policy: nn.Module, sampling: SamplingParams) -> None:
        check_servable(policy, sampling, self.name)
        self.uses_adapter = isinstance(policy, PeftModel)
        base = policy.get_base_model() if self.uses_adapter else policy
        self.dtype = base.get_input_embeddings().weight.dtype
        self.weights_dir = self.weights_root or Path(tempfile.mkdtemp(prefix="lit_rl-weights-"))
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        context = self.max_prompt_length + sampling.max_new_tokens
        if self.launch is not None or not self.urls:
            self._launch(policy, base, context)
        self.base_model = self._check_servers(context)

    def _launch(self, policy: nn.Module, base: nn.Module, context: int) -> None:
        launch = self.launch or ServerLaunch()
        model = str(base.config.name_or_path)
        arguments = [
            *("--dtype", str(self.dtype).removeprefix("torch.")),
            *("--max-model-len", str(context), "--max-num-seqs", str(launch.max_num_seqs)),
            *("--seed", "0", "--logprobs-mode", "processed_logprobs"),
        ]
        kv_bytes = launch.kv_cache_memory_bytes
        if base.get_input_embeddings().weight.device.type == "cpu":
            if kv_bytes is None:
                kv_bytes = kv_cache_bytes(base.config, launch.max_num_seqs * context, self.dtype)
        else:
            arguments += ["--gpu-memory-utilization", str(launch.gpu_memory_utilization)]
        if kv_bytes is not None:
            arguments += ["--kv-cache-memory-bytes", str(kv_bytes)]
        if self.uses_adapter:
            rank = policy.peft_config[policy.active_adapter].r
            served = min(r for r in LORA_RANKS if r >= rank)
            arguments += ["--enable-lora", "--max-lora-rank", str(served)]
        self.launched = [LaunchedServer(launch, model, arguments)]
        try:
            for server in self.launched:
                server.wait_ready()
        except BaseException:
            self.close()
            raise
        self.urls = [server.url for server in self.launched]

    def _check_servers(self, context: int) -> str:
        """The name the servers serve the base model under; each must hold ``context``."""
        names = set()
        for url in self.urls:
            (model, *_) = self._call(url, "GET", "/v1/models")["data"]
            if model.get("max_model_len", context) < context:
                raise ServerError(
                    f"the vLLM server at {url} serves a context of {model['max_model_len']} "
                    f"tokens; the run needs {context} (max_prompt_length + max_completion_length):"
                    " start it with a larger --max-model-len"
                )
            names.add(model["id"])
        if len(names) != 1:
            raise ServerError(f"the vLLM servers {self.urls} serve different models: {names}")
        return names.pop()

    def sleep(self) -> None:
        pass  # the servers keep their memory: they are not on the trainer's device

    def wake(self) -> None:
        pass

    def sample_ahead(self) -> None:
        pass  # its weights are the servers' already: the update cannot reach them

    def close(self) -> None:
        for server in self.launched:
            server.stop()
        if self.launched:
            self.urls = []
        self.launched = []
        if self.weights_dir is not None and self.weights_root is None:
            shutil.rmtree(self.weights_dir, ignore_errors=True)
        self.weights_dir = None
        self.weights_version = NOT_SYNCED
        self.fingerprints = {}
        self.base_checksum = None

    # ---- weights ----------------------------------------------------------------------------
    def sync_weights(self, policy: nn.Module, version: int) -> float:
        if self.uses_adapter:
            checksum = base_checksum(policy)
            if checksum != self.base_checksum:  # the first sync, or a reference sync moved it
                self._reload(base_state_dict(policy), f"base-v{version}")
                self.base_checksum = checksum
            name = self._load_adapter(policy, version)
        else:
            state = policy.state_dict()
            self._reload(state, f"weights-v{version}")
            name = self.base_model
        self._check_probe(policy, name, version)
        fingerprint = policy_fingerprint(policy, adapters=self.uses_adapter)
        self.fingerprints = {name: (version, fingerprint)}
        self.served_name = name
        self.weights_version = version
        return fingerprint

    def _load_adapter(self, policy: PeftModel, version: int) -> str:
        """The policy's adapter on every server under ``policy-v<version>``; the previous one
        unloaded and its folder removed."""
        name = f"policy-v{version}"
        path = self.weights_dir / name
        policy.save_pretrained(path, selected_adapters=[policy.active_adapter])
        adapter = path / policy.active_adapter if policy.active_adapter != "default" else path
        for url in self.urls:
            # in place: a server kept from an earlier run may hold this name already
            body = {"lora_name": name, "lora_path": str(adapter), "load_inplace": True}
            self._call(url, "POST", "/v1/load_lora_adapter", body)
            if self.served_name.startswith("policy-v") and self.served_name != name:
                self._call(url, "POST", "/v1/unload_lora_adapter", {"lora_name": self.served_name})
        self._remove_all_but(name)
        return name

    def _reload(self, state: dict[str, torch.Tensor], folder: str) -> None:
        """Weights into every server in place, from safetensors in ``weights_dir/folder``."""
        path = self.weights_dir / folder
        path.mkdir(parents=True, exist_ok=True)
        save_file(_unshared(state), str(path / "model.safetensors"))
        for url in self.urls:
            body = {"method": "reload_weights", "kwargs": {"weights_path": str(path)}}
            self._call(url, "POST", "/collective_rpc", body)
            self._call(url, "POST", "/reset_prefix_cache")  # cached prefixes are the old weights'
        shutil.rmtree(path)

    def _remove_all_but(self, keep: str) -> None:
        for old in self.weights_dir.iterdir():
            if old.name != keep and old.name.startswith("policy-v"):
                shutil.rmtree(old, ignore_errors=True)

    @torch.no_grad()
    def _check_probe(self, policy: nn.Module, name: str, version: int) -> None:
        """Each server samples a fixed probe prompt under ``name`` (temperature 1); the trainer
        scores the same tokens. Their logprobs must agree: the server computes the policy."""
        vocab = policy.config.vocab_size
        generator = torch.Generator().manual_seed(PROBE_SEED)
        prompt = torch.randint(vocab, (PROBE_PROMPT_TOKENS,), generator=generator).tolist()
        tolerance = self.probe_tolerance or PROBE_TOLERANCE.get(self.dtype, 0.1)
        device = next(policy.parameters()).device
        gaps = []
        for url in self.urls:
            body = {
                "model": name,
                "prompt": prompt,
                "max_tokens": PROBE_SAMPLED_TOKENS,
                "temperature": 1.0,
                "seed": PROBE_SEED,
                "logprobs": 0,
                "return_tokens_as_token_ids": True,
                "ignore_eos": True,
            }
            (choice,) = self._call(url, "POST", "/v1/completions", body)["choices"]
            tokens, server = _tokens_and_logprobs(choice)
            ids = torch.tensor([prompt + tokens], device=device)
            logits = policy(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
            trainer = logits.log_softmax(-1).gather(
                -1, torch.tensor(tokens, device=device)[:, None]
            )
            gap = float((trainer.squeeze(-1).cpu() - torch.tensor(server)).abs().mean())
            gaps.append(gap)
            if not gap <= tolerance:
                raise ServerError(
                    f"the vLLM server at {url}, synced to weights version {version} ({name}), "
                    f"gives logprobs {gap:.3g} nats from the trainer's on the sync probe "
                    f"(tolerance {tolerance:g}): it does not compute the policy's weights (a "
                    "sync that did not take, or weights corrupted on the way)"
                )
        self.last_probe_gap = max(gaps)

    # ---- generation -------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> Generation:
        check_prompt_lengths(request, self.max_prompt_length, self.name)
        prompts = [
            ids[mask.bool()].tolist()
            for ids, mask in zip(request.prompt_ids, request.prompt_mask, strict=True)
        ]
        # One seed per prompt from torch's RNG, which RolloutCallback seeds per rollout.
        seeds = [int(torch.randint(0, 2**31 - 1, (1,))) for _ in prompts]
        bodies = [self._body(request, p, seed) for p, seed in zip(prompts, seeds, strict=True)]
        # All in flight together (the servers batch them), spread over the servers in turn.
        servers = [self.urls[i % len(self.urls)] for i in range(len(bodies))]
        with ThreadPoolExecutor(max_workers=max(1, min(64, len(bodies)))) as pool:
            answers = list(pool.map(self._complete, servers, bodies))
        return self._generation(request, answers)

    def _complete(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(url, "POST", "/v1/completions", body)

    def _body(self, request: GenerationRequest, prompt: list[int], seed: int) -> dict[str, Any]:
        sampling = request.sampling
        return {
            "model": self.served_name,
            "prompt": prompt,
            "n": request.num_generations,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature if sampling.do_sample else 0.0,
            "top_p": 1.0,
            "top_k": -1,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "seed": seed,
            "logprobs": 0,
            "return_tokens_as_token_ids": True,
            "stop_token_ids": list(request.eos_token_ids),
            # Stop strings end a row at the token that completes one, kept whole (the mask's
            # rule, lit_rl.rollout.stops); the server trims only its text, which is not read.
            "stop": list(request.stop.strings) if request.stop is not None else None,
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
        }

    def _generation(self, request: GenerationRequest, answers: list[dict[str, Any]]) -> Generation:
        rows: list[tuple[list[int], list[float]]] = []
        versions: set[tuple[int, float]] = set()
        for answer in answers:
            versions.add(self._served_version(answer.get("model", "")))
            choices = sorted(answer["choices"], key=lambda choice: choice["index"])
            rows += [_tokens_and_logprobs(choice) for choice in choices]
        length = max([1, *(len(tokens) for tokens, _ in rows)])
        completion_ids = torch.full((len(rows), length), request.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros(len(rows), length)
        for i, (tokens, values) in enumerate(rows):
            completion_ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            logprobs[i, : len(tokens)] = torch.tensor(values)
        version, fingerprint = versions.pop() if len(versions) == 1 else (NOT_SYNCED, math.nan)
        device = request.prompt_ids.device
        return Generation(completion_ids.to(device), logprobs.to(device), version, fingerprint)

    def _served_version(self, model: str) -> tuple[int, float]:
        """The version and fingerprint of the weights a server reports it answered with."""
        if model not in self.fingerprints:
            raise ServerError(
                f"a vLLM server answered with model {model!r}, which no sync of this run put "
                f"there (the current weights are {self.served_name!r})"
            )
        return self.fingerprints[model]

    # ---- HTTP -------------------------------------------------------------------------------
    def _call(
        self, url: str, method: str, route: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        try:
            response = requests.request(
                method, f"{url}{route}", json=body, timeout=self.request_timeout_s
            )
        except requests.Timeout as error:
            raise ServerError(
                f"the vLLM server at {url} did not answer {route} within "
                f"{self.request_timeout_s:g} s (request_timeout_s): hung or overloaded"
                f"{self._state(url)}"
            ) from error
        except requests.ConnectionError as error:
            raise ServerError(
                f"the vLLM server at {url} cannot be reached for {route}{self._state(url)}"
            ) from error
        if response.status_code != 200:
            raise ServerError(
                f"the vLLM server at {url} refused {route} (HTTP {response.status_code}): "
                f"{response.text[:500]}{self._state(url)}"
            )
        is_json = response.headers.get("content-type", "").startswith("application/json")
        return response.json() if is_json else {}  # some routes answer in plain text

    def _state(self, url: str) -> str:
        """What is known of a launched server: its exit code and the end of its log."""
        for server in self.launched:
            if server.url == url and server.exit_code() is not None:
                return (
                    f"; it exited with code {server.exit_code()}, the end of its log "
                    f"({server.log_path}):\n{server.log_tail()}"
                )
        return ""


def _tokens_and_logprobs(choice: dict[str, Any]) -> tuple[list[int], list[float]]:
    """A completion choice's sampled token ids (``token_id:<id>``) and their logprobs."""
    logprobs = choice["logprobs"]
    tokens = [int(token.removeprefix("token_id:")) for token in logprobs["tokens"]]
    return tokens, [float(value) for value in logprobs["token_logprobs"]]


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with no two tensors sharing memory (tied embeddings), as safetensors needs."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out
