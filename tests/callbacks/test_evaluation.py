"""The held-out evaluation through the Trainer, on an engine whose answers are scripted: greedy
accuracy, pass@1, pass@n and maj@n equal the values worked out by hand, and the table prints."""

import logging

import pytest
import torch
from lightning.pytorch import Trainer

from lit_rl.callbacks import EvaluationCallback, RolloutCallback
from lit_rl.data import PromptDataModule
from lit_rl.evaluation import EvaluationPlan
from lit_rl.modules import GRPOModule
from lit_rl.rewards import FunctionReward
from lit_rl.rollout import Generation, GenerationRequest, InProcessEngine, LogprobCheck
from tests.conftest import tiny_module_args

N = 3  # samples per problem


class ScriptedEngine(InProcessEngine):
    """Answers each prompt with text fixed in advance: ``script[question]`` is the greedy
    answer and the N sampled ones (a prompt not in it, "0" every time). Completions are the
    answers' tokens, then an EOS."""

    name = "ScriptedEngine"

    def __init__(self, tokenizer, script: dict[str, tuple[str, list[str]]]) -> None:
        super().__init__()
        self.tokenizer, self.script = tokenizer, script

    def generate(self, request: GenerationRequest) -> Generation:
        rows = []
        for ids, mask in zip(request.prompt_ids, request.prompt_mask.bool(), strict=True):
            prompt = self.tokenizer.decode(ids[mask])
            scripted = [a for q, a in self.script.items() if q in prompt]
            if not scripted:  # a training prompt
                answers = ["0"] * request.num_generations
            else:
                greedy, samples = scripted[0]
                answers = samples if request.sampling.do_sample else [greedy]
                assert len(answers) == request.num_generations
            rows += [self.tokenizer(a).input_ids + [request.eos_token_ids[0]] for a in answers]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), request.pad_token_id)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return self.answer(ids, torch.zeros(ids.shape))


def exact_answer(prompts, completions, batch):
    return [float(c.strip() == str(a)) for c, a in zip(completions, batch["answer"], strict=True)]


def _setup(tiny_model_dir):
    """A module and 5 held-out problems; problem k: greedy right iff k is even, c_k = k % 4
    of its N samples right (they come first), the others answer answer + 1."""
    data = PromptDataModule(
        tokenizer=str(tiny_model_dir), batch_size=2, num_train=8, num_val=5, val_batch_size=2
    )
    data.setup("validate")
    script, expected = {}, []
    for k, row in enumerate(data.val_rows):
        right, wrong = str(row["answer"]), str(int(row["answer"]) + 1)
        correct = min(k % 4, N)
        script[row["question"]] = (
            right if k % 2 == 0 else wrong,
            [right] * correct + [wrong] * (N - correct),
        )
        expected.append((k % 2 == 0, correct, len(right if k % 2 == 0 else wrong) + 1))
    module = GRPOModule(
        **tiny_module_args(
            tiny_model_dir,
            reward=FunctionReward(exact_answer, name="exact"),
            evaluation=EvaluationPlan(num_samples=N),
        )
    )
    module.engine = ScriptedEngine(module.tokenizer, script)
    return module, data, expected


def _trainer(callbacks, steps=2, interval=1000):
    return Trainer(
        max_steps=steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        val_check_interval=interval,  # 1000: never on the way, only the callback's last one
    )


def test_the_evaluation_gives_the_scripted_answers_scores(tiny_model_dir, caplog):
    module, data, expected = _setup(tiny_model_dir)
    with caplog.at_level(logging.INFO):
        (logged,) = _trainer([EvaluationCallback()]).validate(module, data)
    greedy = [g for g, _, _ in expected]
    correct = [c for _, c, _ in expected]
    assert logged["val/greedy_accuracy"] == pytest.approx(sum(greedy) / 5)  # 3 of 5
    assert logged["val/reward"] == pytest.approx(sum(greedy) / 5)
    assert logged["val/completion_len"] == pytest.approx(sum(n for *_, n in expected) / 5)
    assert logged["val/pass@1"] == pytest.approx(sum(c / N for c in correct) / 5)
    assert logged[f"val/pass@{N}"] == pytest.approx(sum(c > 0 for c in correct) / 5)
    # maj@N: the answer given by most samples (right ones vote for the answer, wrong ones
    # for answer + 1) is right when at least 2 of the 3 samples are.
    assert logged[f"val/maj@{N}"] == pytest.approx(sum(c >= 2 for c in correct) / 5)
    table = next(r.getMessage() for r in caplog.records if "lit_rl evaluation" in r.getMessage())
    assert "lit_rl evaluation (0 optimizer steps)" in table
    assert f"greedy_accuracy  {0.6:>10.4f}" in table


def test_the_last_evaluation_runs_when_training_ends_and_prints_the_table(tiny_model_dir, caplog):
    torch.manual_seed(0)
    module, data, _ = _setup(tiny_model_dir)
    rollout = RolloutCallback(LogprobCheck(enabled=False))  # scripted logprobs are 0
    with caplog.at_level(logging.INFO):
        trainer = _trainer([rollout, EvaluationCallback()])
        trainer.fit(module, data)
    assert trainer.global_step == 2
    assert trainer.callback_metrics["val/greedy_accuracy"] == pytest.approx(0.6)
    table = next(
        r.getMessage() for r in caplog.records if "lit_rl evaluation after" in r.getMessage()
    )
    assert "lit_rl evaluation after 2 optimizer steps" in table


def test_a_run_shorter_than_its_interval_skips_the_last_evaluation_and_says_how(
    tiny_model_dir, caplog
):
    rollout = RolloutCallback(LogprobCheck(enabled=False))
    module, data, _ = _setup(tiny_model_dir)
    with caplog.at_level(logging.INFO):
        trainer = _trainer([rollout, EvaluationCallback(short_runs="skip")])  # 2 < 1000 steps
        trainer.fit(module, data)
    assert trainer.global_step == 2 and "val/greedy_accuracy" not in trainer.callback_metrics
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "no held-out evaluation after this 2-step run" in messages
    assert "lit_rl evaluation after" not in messages
    # A run as long as its interval is evaluated at the end as before.
    module, data, _ = _setup(tiny_model_dir)
    trainer = _trainer([rollout, EvaluationCallback(short_runs="skip")], steps=2, interval=2)
    trainer.fit(module, data)
    assert trainer.callback_metrics["val/greedy_accuracy"] == pytest.approx(0.6)


def test_without_the_callback_no_last_evaluation_runs(tiny_model_dir):
    module, data, _ = _setup(tiny_model_dir)
    trainer = _trainer([RolloutCallback(LogprobCheck(enabled=False))])
    trainer.fit(module, data)
    assert "val/greedy_accuracy" not in trainer.callback_metrics


def test_one_batch_without_a_trainer_by_hand(tiny_model_dir):
    # evaluate_batch alone: a sampler over the scripted engine and the reward, per problem.
    from lit_rl.evaluation import evaluate_batch
    from lit_rl.models import load_model
    from lit_rl.rollout import CompletionSampler, SamplingParams

    module, data, expected = _setup(tiny_model_dir)
    sampler = CompletionSampler(
        module.engine,
        load_model(str(tiny_model_dir)),
        module.tokenizer,
        (module.tokenizer.eos_token_id,),
        SamplingParams(max_new_tokens=8),
    )
    batch = next(iter(data.val_dataloader()))  # problems 0 and 1
    result = evaluate_batch(sampler, module.reward, batch, EvaluationPlan(N), 0, "batch 0")
    assert result.greedy_correct.tolist() == [True, False]
    assert result.greedy_length.tolist() == [n for *_, n in expected[:2]]
    assert result.sample_correct.tolist() == [[False] * 3, [True, False, False]]
    assert result.majority_correct.tolist() == [False, False]
