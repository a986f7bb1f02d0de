"""A stand-in ``vllm`` module: the slice of vLLM's API that VLLMEngine uses, backed by
transformers in float32, recording every call. It samples from what it was given (the
checkpoint on disk, then loaded weights or LoRA adapters), so a sync that did not reach it
shows in the logprob check exactly as with the real thing."""

import sys
import types
from types import SimpleNamespace
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


class LoRARequest:
    def __init__(self, lora_name: str, lora_int_id: int, lora_path: str) -> None:
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


class SamplingParams:
    def __init__(self, **kwargs: Any) -> None:  # noqa: ANN401
        self.__dict__.update(kwargs)


class RunnerModel:
    """vLLM's model inside its worker: ``load_weights`` by checkpoint names."""

    def __init__(self, llm: "LLM") -> None:
        self.llm = llm

    def load_weights(self, weights: Any) -> None:  # noqa: ANN401
        items = dict(weights)
        self.llm.calls.append(("load_weights", sorted(items)))
        state = self.llm.model.state_dict()
        unknown = set(items) - set(state)
        if unknown:
            raise KeyError(f"vLLM has no parameters named {sorted(unknown)[:3]}")
        self.llm.model.load_state_dict({**state, **items})


class LLM:
    instances: list["LLM"] = []

    def __init__(self, model: str, **kwargs: Any) -> None:  # noqa: ANN401
        self.kwargs = kwargs
        self.calls: list[tuple[str, Any]] = []
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.adapters: dict[int, torch.nn.Module] = {}
        self.awake = True
        runner = SimpleNamespace(model=RunnerModel(self))
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))
        )
        LLM.instances.append(self)

    def sleep(self, level: int) -> None:
        self.calls.append(("sleep", level))
        self.awake = False

    def wake_up(self) -> None:
        self.calls.append(("wake_up", None))
        self.awake = True

    def reset_prefix_cache(self) -> None:
        self.calls.append(("reset_prefix_cache", None))

    def _model_for(self, lora_request: LoRARequest | None) -> torch.nn.Module:
        if lora_request is None:
            return self.model
        if lora_request.lora_int_id not in self.adapters:  # vLLM caches adapters by id
            base = AutoModelForCausalLM.from_pretrained(
                self.model.config._name_or_path, dtype=torch.float32
            )
            self.adapters[lora_request.lora_int_id] = PeftModel.from_pretrained(
                base, lora_request.lora_path
            ).eval()
        return self.adapters[lora_request.lora_int_id]

    @torch.no_grad()
    def generate(
        self,
        prompts: list[dict[str, list[int]]],
        sampling_params: SamplingParams,
        lora_request: LoRARequest | None = None,
        use_tqdm: bool = True,
    ) -> list[SimpleNamespace]:
        if not self.awake:
            raise RuntimeError("generate while asleep")
        self.calls.append(("generate", None if lora_request is None else lora_request.lora_int_id))
        model = self._model_for(lora_request)
        params = sampling_params
        outputs = []
        for prompt in prompts:
            completions = []
            for _ in range(params.n):
                ids = list(prompt["prompt_token_ids"])
                tokens, logprobs = [], []
                for _ in range(params.max_tokens):
                    logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
                    if params.temperature == 0:
                        token = int(logits.argmax())
                        logprob = float(logits.log_softmax(-1)[token])
                    else:
                        scaled = (logits / params.temperature).log_softmax(-1)
                        token = int(torch.multinomial(scaled.exp(), 1))
                        logprob = float(scaled[token])
                    tokens.append(token)
                    logprobs.append({token: SimpleNamespace(logprob=logprob)})
                    ids.append(token)
                    if token in params.stop_token_ids:
                        break
                completions.append(SimpleNamespace(token_ids=tokens, logprobs=logprobs))
            outputs.append(SimpleNamespace(outputs=completions))
        return outputs


def install(monkeypatch: Any) -> types.ModuleType:  # noqa: ANN401
    """Put the stand-in where ``import vllm`` finds it, for one test."""
    vllm = types.ModuleType("vllm")
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    vllm.LLM, vllm.SamplingParams, vllm.lora = LLM, SamplingParams, lora
    request.LoRARequest = LoRARequest
    lora.request = request
    LLM.instances = []
    for name, module in [("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)]:
        monkeypatch.setitem(sys.modules, name, module)
    return vllm
