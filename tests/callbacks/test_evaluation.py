"""EvaluationCallback and the module's evaluation on the run's engine."""

import logging

import pytest
import torch
from lightning.pytorch import Trainer

from lit_rl.callbacks import EvaluationCallback, RolloutCallback
from lit_rl.data import PromptDataModule
from lit_rl.evaluation import EvaluationPlan
from lit_rl.modules import GRPOModule
from lit_rl.rollout import GenerationRequest, SamplingParams
from tests.conftest import tiny_module_args


def _fit(tiny_model_dir, callbacks, steps=2):
    torch.manual_seed(0)
    module = GRPOModule(
        **tiny_module_args(tiny_model_dir, evaluation=EvaluationPlan(num_samples=3))
    )
    data = PromptDataModule(
        tokenizer=str(tiny_model_dir), batch_size=2, num_train=8, num_val=5, val_batch_size=2
    )
    trainer = Trainer(
        max_steps=steps,
        callbacks=[RolloutCallback(), *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        val_check_interval=1000,  # never on the way: only the callback's last evaluation
    )
    trainer.fit(module, data)
    return trainer, module, data


def test_the_last_evaluation_scores_the_final_weights_and_prints_the_table(tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO):
        trainer, module, data = _fit(tiny_model_dir, [EvaluationCallback()])
    logged = trainer.callback_metrics
    names = {"greedy_accuracy", "reward", "completion_len", "pass@1", "pass@3", "maj@3"}
    assert {f"val/{name}" for name in names} <= set(logged)
    assert 0 <= logged["val/pass@1"] <= logged["val/pass@3"] <= 1
    # Greedy accuracy recomputed by hand with the final weights, through the same engine.
    correct = []
    for batch in data.val_dataloader():
        greedy = SamplingParams(module.sampling.max_new_tokens, do_sample=False)
        request = GenerationRequest(
            batch["input_ids"],
            batch["attention_mask"],
            1,
            greedy,
            module.tokenizer.pad_token_id,
            tuple(module.eos_token_ids),
        )
        _, texts = module.decode_completions(module.generate(request).completion_ids)
        fields = {k: v for k, v in batch.items() if isinstance(v, list)}
        correct += (module.score(batch["prompt"], texts, fields, "check").total >= 1.0).tolist()
    assert logged["val/greedy_accuracy"].item() == pytest.approx(sum(correct) / len(correct))
    table = next(
        r.getMessage() for r in caplog.records if "lit_rl evaluation after" in r.getMessage()
    )
    assert "lit_rl evaluation after 2 optimizer steps" in table
    assert f"greedy_accuracy  {logged['val/greedy_accuracy'].item():>10.4f}" in table


def test_without_the_callback_no_last_evaluation_runs(tiny_model_dir):
    trainer, _, _ = _fit(tiny_model_dir, [])
    assert "val/greedy_accuracy" not in trainer.callback_metrics
