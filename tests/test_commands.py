"""``lit-rl generate`` and ``lit-rl export`` on the checkpoint of a 2-step run: the export loads
in plain transformers (and peft for the adapter) with the trained module's logits; generate's
greedy completions are the module engine's and transformers' own."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lit_rl.cli import main, run_cli
from tests.test_cli import TINY

PROMPTS = ["What is 2 + 3?", "Tom has 4 apples and buys 5 more. How many apples now?"]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A 2-step float32 LoRA run: (its module as trained, its last.ckpt, its folder)."""
    folder = tmp_path_factory.mktemp("run")
    cli = run_cli(
        [
            "fit", "--config", "recipes/grpo_math_local.yaml",
            f"--model.init_args.model={tiny_model_dir}", "--model.init_args.dtype=float32",
            # a reward with a spread on a random model, so that the 2 steps move the adapter
            "--model.init_args.reward.class_path=tests.byo_reward.ContainsTargetCharacter",
            "--model.init_args.reward.init_args.field=answer",
            f"--trainer.logger.init_args.save_dir={folder}", "--trainer.max_steps=2",
            "--trainer.val_check_interval=100", "--data.init_args.num_val=0", *TINY,
        ]
    )  # fmt: skip
    checkpoint = folder / "grpo_math_local" / "version_0" / "checkpoints" / "last.ckpt"
    module = cli.model
    module.sampler.close()
    return module, checkpoint


def _ids(module) -> torch.Tensor:
    return module.tokenizer(PROMPTS[1], return_tensors="pt").input_ids


def test_the_export_has_the_trained_modules_logits_in_transformers_and_peft(
    trained, tiny_model_dir, tmp_path
):
    module, checkpoint = trained
    with torch.no_grad():
        expected = module.policy(_ids(module)).logits
    lora_b = [p for n, p in module.policy.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # trained: the adapter moved off zero
    main(["export", str(checkpoint), str(tmp_path / "merged")])
    main(["export", str(checkpoint), str(tmp_path / "adapter"), "--adapter-only"])
    main(["export", str(checkpoint), str(tmp_path / "bf16"), "--dtype", "bfloat16"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    adapter = PeftModel.from_pretrained(base, tmp_path / "adapter")
    bf16 = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    with torch.no_grad():
        for name, model in (("merged", merged), ("adapter", adapter)):
            logits = model(_ids(module)).logits
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5, msg=name)
        assert bf16.dtype == torch.bfloat16
        assert (bf16(_ids(module)).logits.float() - expected).abs().max() < 0.1
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # the adapter alone


def test_generate_greedy_is_the_module_engines_and_transformers_greedy(trained, tmp_path):
    module, checkpoint = trained
    out = tmp_path / "greedy.jsonl"
    main(["generate", str(checkpoint), *PROMPTS, "--greedy", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    suffix = " Give the final answer as 'Answer: <number>'."  # the run's config.yaml's
    assert [r["prompt"] for r in rows] == [p + suffix for p in PROMPTS]
    # The trained module's own engine, on the same prompts.
    data = module.trainer.datamodule
    batch = data.collate(data.prepare([{"question": p} for p in PROMPTS], "prompt"))
    engine = module.sampler.rollouts(batch, 1, version=0, greedy=True)
    module.sampler.close()
    assert [r["completion"] for r in rows] == engine.texts
    # transformers' own greedy decoding on the export, prompt by prompt (no padding).
    main(["export", str(checkpoint), str(tmp_path / "policy")])
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    for row, ids in zip(rows, batch["input_ids"], strict=True):
        prompt = ids[ids != module.tokenizer.pad_token_id][None]
        tokens = plain.generate(
            prompt, do_sample=False, max_new_tokens=module.sampling.max_new_tokens,
            eos_token_id=module.tokenizer.eos_token_id, pad_token_id=module.tokenizer.pad_token_id,
        )[0, prompt.shape[1]:]  # fmt: skip
        assert row["completion"] == module.tokenizer.decode(tokens, skip_special_tokens=True)
        assert row["tokens"] == len(tokens)


def test_generate_samples_scores_and_reads_a_prompt_file(trained, tmp_path, capsys):
    _, checkpoint = trained
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"question": p, "answer": a}) + "\n"
            for p, a in zip(PROMPTS, "59", strict=True)
        )
    )
    args = [str(checkpoint), "--prompts-file", str(prompts), "--num-samples", "3", "--score"]
    main(["generate", *args, "--max-new-tokens", "5", "--temperature", "1.5"])
    printed = capsys.readouterr().out
    assert printed.count("### prompt") == 6 and "### prompt 1, sample 2, reward " in printed
    main(["generate", *args, "--max-new-tokens", "5", "--out", str(tmp_path / "a.jsonl")])
    main(["generate", *args, "--max-new-tokens", "5", "--out", str(tmp_path / "b.jsonl")])
    first, second = ((tmp_path / n).read_text() for n in ("a.jsonl", "b.jsonl"))
    assert first == second  # --seed 0 both times
    rows = [json.loads(line) for line in first.splitlines()]
    assert len({r["completion"] for r in rows}) > 1 and all(r["tokens"] <= 5 for r in rows)
    for row in rows:  # the run's reward (ContainsTargetCharacter), by hand
        hit = float("59"[row["index"]] in row["completion"])
        assert row["reward"] == pytest.approx(hit + 1 / (1 + len(row["completion"])))


def test_generate_from_a_model_directory_and_bad_input(tiny_model_dir, tmp_path, capsys):
    main(["generate", str(tiny_model_dir), "Hi", "--greedy", "--max-new-tokens", "4"])
    assert "### prompt 0, sample 0\nHi\n---\n" in capsys.readouterr().out  # no recipe: no suffix
    cases = [
        (["generate", str(tiny_model_dir), "Hi", "--greedy", "--num-samples", "2"], "--greedy"),
        (["generate", str(tiny_model_dir)], "no prompts"),
        (["generate", str(tiny_model_dir), "Hi", "--score"], "reads the dataset field(s) ['answer']"),
        (["export", str(tiny_model_dir), str(tmp_path / "x")], "is not a checkpoint"),
        (["export", str(tmp_path / "none.ckpt"), str(tmp_path / "x")], "does not exist"),
        (["test"], "unknown command 'test'"),
    ]  # fmt: skip
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2, args
        assert message in capsys.readouterr().err, args


def test_help_lists_each_command_with_one_line(capsys):
    main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    commands = [line.split()[0] for line in lines if line.startswith("  ")]
    assert commands == ["fit", "validate", "generate", "export", "plot"]


def test_a_checkpoint_without_its_run_needs_a_config(trained, tmp_path, capsys):
    _, checkpoint = trained
    alone = tmp_path / "alone.ckpt"
    alone.write_bytes(Path(checkpoint).read_bytes())
    with pytest.raises(SystemExit):
        main(["generate", str(alone), "Hi"])
    assert "pass --config with the recipe it was trained with" in capsys.readouterr().err


def test_plot_draws_a_real_runs_logs(trained, tmp_path, capsys):
    _, checkpoint = trained
    run = Path(checkpoint).parents[1]
    out = tmp_path / "curve.png"
    main(["plot", str(run), "--tag", "rollout/reward", "--tag", "train/kl", "--out", str(out)])
    assert out.stat().st_size > 0
    assert "drew rollout/reward, train/kl into" in capsys.readouterr().err
