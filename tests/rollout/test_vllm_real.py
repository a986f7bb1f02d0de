"""VLLMEngine against the real vLLM (its CPU build here): ``make test-vllm`` builds an
environment with it and runs these (``-m vllm``); ``make test`` leaves them out. A tiny Llama
whose heads are 64 wide (vLLM's CPU attention needs that), float32 on both sides, so the
engine's logprobs must be the trainer's to numerical noise."""

import logging

import pytest
import torch
import yaml
from lightning.pytorch import Callback
from transformers import LlamaForCausalLM

from lit_rl.modules import GRPOModule
from lit_rl.rewards import FunctionReward
from lit_rl.rollout import LogprobCheck, StaleWeightsError, VLLMEngine, policy_fingerprint
from tests.conftest import build_tokenizer, fit_rollouts, tiny_llama_config, tiny_module_args

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module", autouse=True)
def real_vllm():
    # In a fixture, not at import: `make test` deselects these (-m "not vllm") before it runs.
    return pytest.importorskip("vllm")


STRICT = LogprobCheck(warn_k3=1e-6, error_k3=1e-5)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vllm-llama")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = tiny_llama_config(
        len(tokenizer),
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        hidden_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=256,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


class EngineState(Callback):
    """After every step: the mismatch, and what the engine holds."""

    def __init__(self) -> None:
        self.k3: list[float] = []
        self.adapter_folders: list[int] = []
        self.config = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        engine = pl_module.sampler.engine
        self.k3.append(trainer.callback_metrics["rollout/logprob_mismatch_k3"].item())
        if engine.adapter_dir is not None:
            self.adapter_folders.append(len(list(engine.adapter_dir.iterdir())))
        self.config = engine.llm.llm_engine.vllm_config


def _fit(model_dir, engine, steps=3, **module_args):
    torch.manual_seed(0)
    module = GRPOModule(**tiny_module_args(model_dir, **{"learning_rate": 5e-2, **module_args}))
    state = EngineState()
    trainer = fit_rollouts(module, model_dir, steps, [state], engine=engine, logprob_check=STRICT)
    return trainer, module, state


def test_a_lora_policy_is_served_as_its_adapter_at_a_rank_vllm_allows(model_dir):
    engine = VLLMEngine()
    trainer, module, state = _fit(model_dir, engine)
    # The policy's rank 4 is not one vLLM serves: it gets 8 (zero-padded).
    assert state.config.lora_config.max_lora_rank == 8
    assert state.config.model_config.dtype == torch.float32  # the policy's, not vLLM's bf16
    assert state.config.model_config.max_model_len == 256 + 8  # prompt + completion budget
    assert max(state.k3) < 1e-6  # every step sampled the adapter just trained
    assert trainer.callback_metrics["rollout/weights_version"].item() == 2
    assert state.adapter_folders == [1, 1, 1]  # the current version's only
    assert engine.llm is None and engine.adapter_dir is None  # closed at the end of fit


@pytest.mark.parametrize(
    ("lora", "engine_args"),
    [(True, {"lora_as_adapter": False}), (False, {})],
    ids=["merged-lora", "full-finetuning"],
)
def test_merged_and_full_weights_are_reloaded_in_place(model_dir, lora, engine_args):
    module_args = {} if lora else {"lora": None, "learning_rate": 1e-3}
    trainer, _, state = _fit(model_dir, VLLMEngine(**engine_args), **module_args)
    assert state.config.lora_config is None
    assert max(state.k3) < 1e-6
    assert trainer.callback_metrics["rollout/weights_version"].item() == 2


def test_sleep_mode_is_kept_off_where_the_platform_has_none(model_dir, caplog):
    engine = VLLMEngine(sleep_mode=True)
    with caplog.at_level(logging.INFO):
        _fit(model_dir, engine, steps=1)
    assert "vLLM has no sleep mode on this platform" in caplog.text
    assert not engine.sleep_mode and not engine.asleep


def _sampler(model_dir, engine, **module_args):
    module = GRPOModule(**tiny_module_args(model_dir, engine=engine, **module_args))
    module.configure_model()
    return module.sampler


def test_requests_are_seeded_from_torchs_rng_and_a_second_setup_works(model_dir):
    # A resumed run reseeds torch per rollout, so the engine samples what it sampled before.
    engine = VLLMEngine()
    sampler = _sampler(model_dir, engine)
    prompts = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
    torch.set_num_threads(2)  # vLLM drops the process to one thread: the trainer keeps its

    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return sampler.sample(*prompts, num_generations=4, version=0).ids

    first = draw(1)
    assert torch.get_num_threads() == 2
    assert torch.equal(draw(1), first) and not torch.equal(draw(2), first)
    sampler.close()  # the end of fit; then, say, validate in the same process
    assert torch.equal(draw(1), first)


def test_an_empty_batch_and_an_overlong_prompt(model_dir):
    sampler = _sampler(model_dir, VLLMEngine(max_prompt_length=6))
    empty = sampler.sample(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3), 2, version=0)
    assert empty.ids.shape[0] == 0 and empty.texts == []
    long = torch.full((1, 7), 5), torch.ones(1, 7, dtype=torch.long)
    with pytest.raises(
        ValueError, match="7 tokens is longer than VLLMEngine's max_prompt_length=6"
    ):
        sampler.sample(*long, 1, version=0)


def test_a_greedy_completion_is_transformers_greedy_completion(model_dir):
    sampler = _sampler(model_dir, VLLMEngine())
    prompt = torch.tensor([[5, 6, 7, 8]])
    out = sampler.sample(prompt, torch.ones_like(prompt), 1, version=0, greedy=True)
    reference = sampler.policy.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=out.ids.shape[1],
        eos_token_id=list(sampler.eos_token_ids),
        pad_token_id=sampler.pad_token_id,
    )[:, prompt.shape[1] :]
    counted = out.mask
    assert torch.equal(out.ids[counted], reference[:, : out.ids.shape[1]][counted])


def test_vllm_stops_at_the_token_that_completes_a_stop_string(model_dir):
    # vLLM's own stop strings, kept in the output: every row ends where lit_rl's rule (the
    # sampler's mask, lit_rl.rollout.StopStrings) says, with nothing sampled after it.
    strings = ("a", "e", "o", "s", "t", "n", "1", "2")
    sampler = _sampler(
        model_dir, VLLMEngine(), stop_strings=list(strings), max_completion_length=24
    )
    prompts = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
    torch.manual_seed(0)
    out = sampler.sample(*prompts, 8, version=0)
    eos, stopped = sampler.eos_token_ids, 0
    for ids, mask in zip(out.ids.tolist(), out.mask, strict=True):
        length = int(mask.sum())
        ended_by_stop = any(s in sampler.decode(ids[:length]) for s in strings)
        assert not any(s in sampler.decode(ids[: length - 1]) for s in strings)
        # vLLM sampled nothing past the end (padding, or an EOS that ended the row).
        assert all(t == sampler.pad_token_id for t in ids[length:]), (ids, length)
        stopped += ended_by_stop and ids[length - 1] not in eos
    assert stopped >= 4  # most of the 8 rows ended at a stop string


def test_a_killed_run_resumes_exactly_with_vllm(model_dir, tmp_path):
    # The resume tests' GRPO + LoRA run (8 rollouts, 2 evaluations, a reference sync at
    # rollout 3, which moves the base weights beneath the adapter vLLM serves), killed after
    # rollout 4 and resumed with --ckpt_path last, equals the uninterrupted one bit for bit.
    from tests.reliability import test_resume

    runs = test_resume.prepare("grpo", True, model_dir, tmp_path, "uninterrupted", "killed")
    for out in runs.values():
        config = yaml.safe_load((out / "config.yaml").read_text())
        config["model"]["init_args"]["engine"] = {"class_path": "lit_rl.rollout.VLLMEngine"}
        (out / "config.yaml").write_text(yaml.safe_dump(config))
    first = test_resume.fit(runs["uninterrupted"] / "config.yaml")
    assert first.returncode == 0, first.stderr[-3000:]
    every = test_resume.STEPS_PER_BATCH["grpo"]
    killed = test_resume.fit(
        runs["killed"] / "config.yaml",
        *test_resume.probe("KillAfterStep", step=test_resume.KILLED_AT * every),
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = test_resume.fit(runs["killed"] / "config.yaml", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    test_resume.assert_same_run(runs["uninterrupted"], runs["killed"])


class SkippingVLLMEngine(VLLMEngine):
    """The real VLLMEngine, but its sync at version 1 does not reach vLLM (the old adapter, or
    the old weights, stay); it still reports version 1."""

    def sync_weights(self, policy, version):
        if version != 1:
            return super().sync_weights(policy, version)
        self.weights_version = version
        return policy_fingerprint(policy, adapters=self.uses_adapter)


@pytest.mark.parametrize(
    ("lora", "engine_args"),
    [(True, {}), (False, {})],
    ids=["adapter", "full-finetuning"],
)
def test_a_sync_that_does_not_reach_vllm_stops_the_run_by_name(model_dir, lora, engine_args):
    # The fingerprint is read from vLLM's own storage (its LoRA slots; its embedding and norms
    # for full weights), so the run stops at the step the engine went stale, by name.
    # A reward that differs between completions: the first step moves the weights.
    varied = FunctionReward(lambda p, c, b: [float(sum(map(ord, x)) % 7) for x in c], name="v")
    module_args = {"reward": varied} | ({} if lora else {"lora": None, "learning_rate": 1e-3})
    with pytest.raises(
        StaleWeightsError, match="VLLMEngine sampled with weights of fingerprint .* version 1"
    ):
        _fit(model_dir, SkippingVLLMEngine(**engine_args), **module_args)


def test_episodes_are_sampled_turn_by_turn_by_the_real_vllm(model_dir):
    # Every turn a batch of the live episodes' conversations; the engine's logprobs of the
    # sampled turns are the trainer's (float32), the environment's tokens masked out.
    from lit_rl.environments import Episodes
    from lit_rl.rewards import EpisodeReward
    from tests.environments.toy import Guess

    episodes = Episodes(Guess, max_turns=3, max_episode_tokens=80, max_observation_tokens=30)
    engine = VLLMEngine(max_prompt_length=256 + 80)
    trainer, module, state = _fit(
        model_dir, engine, steps=2, reward=EpisodeReward(), episodes=episodes
    )
    assert max(state.k3) < 1e-6
    turns = trainer.callback_metrics["rollout/episode/turns"].item()
    assert turns > 1
