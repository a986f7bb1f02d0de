"""``lit-rl generate``: a trained policy's completions (or episodes, for a run with an
environment) for prompts from the command line or a file, through the run's engine with its
sampling settings or overrides; each optionally scored by the run's reward."""

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lit_rl.commands.policy import load_policy
from lit_rl.data import load_rows
from lit_rl.modules import PolicyModule
from lit_rl.rewards import call_reward, check_reward_fields
from lit_rl.rollout import EpisodeCompletions

HELP = "sample completions from a checkpoint, an exported directory or a hub id"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "policy", help="a .ckpt file or sharded checkpoint folder, a model directory, a hub id, "
        "or 'embedded'"
    )  # fmt: skip
    parser.add_argument("prompts", nargs="*", help="prompts (the chat template is applied)")
    parser.add_argument("--prompts-file", type=Path, help=".jsonl/.json/.parquet rows of prompts")
    parser.add_argument(
        "--config", type=Path, help="a recipe or a run's config.yaml (a checkpoint's default: "
        "its run's)"
    )  # fmt: skip
    parser.add_argument("--num-samples", type=int, default=1, help="completions per prompt")
    parser.add_argument("--greedy", action="store_true", help="the argmax token at every step")
    parser.add_argument("--temperature", type=float, help="default: the run's")
    parser.add_argument("--top-p", type=float, help="default: the run's")
    parser.add_argument("--max-new-tokens", type=int, help="default: max_completion_length")
    parser.add_argument("--score", action="store_true", help="score each with the run's reward")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per engine call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write one JSON line per completion here")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The completions as rows (prompt, sample, completion, reward when scored), printed to
    the terminal or written to ``args.out``."""
    if args.greedy and args.num_samples != 1:
        raise ValueError("--greedy gives one completion per prompt: drop --num-samples")
    if args.num_samples < 1 or args.batch_size < 1:
        raise ValueError("--num-samples and --batch-size must be >= 1")
    loaded = load_policy(args.policy, args.config)
    module, data = loaded.module, loaded.data
    overrides = {"temperature": args.temperature, "top_p": args.top_p}
    overrides["max_new_tokens"] = args.max_new_tokens
    module.sampling = replace(
        module.sampling, **{k: v for k, v in overrides.items() if v is not None}
    )
    rows = [{data.prompt_field: prompt} for prompt in args.prompts]
    if args.prompts_file is not None:
        rows += load_rows(str(args.prompts_file), "train")
    if not rows:
        raise ValueError("no prompts: pass them after the policy, or --prompts-file FILE")
    prepared = data.prepare(rows, "prompt")
    if args.score:  # before any sampling
        check_reward_fields(module.reward, data.collate(prepared))
    torch.manual_seed(args.seed)
    results = []
    for start in range(0, len(prepared), args.batch_size):
        batch = data.collate(prepared[start : start + args.batch_size])
        results += _sample(module, batch, args.num_samples, args.greedy, args.score, start)
    module.sampler.close()
    _write(results, args.out)
    return results


def _sample(
    module: PolicyModule,
    batch: dict[str, Any],
    num_samples: int,
    greedy: bool,
    score: bool,
    first_index: int,
) -> list[dict[str, Any]]:
    sampled = module.sampler.rollouts(batch, num_samples, version=0, greedy=greedy)
    fields = {
        k: [x for x in v for _ in range(num_samples)]
        for k, v in batch.items()
        if isinstance(v, list)
    }
    rewards = None
    if score:
        fields |= sampled.fields  # an episode's environment reward
        output = call_reward(module.reward, fields["prompt"], sampled.texts, fields, "generate")
        rewards = output.total.float().tolist()
    rows = []
    for i, text in enumerate(sampled.texts):
        row = {"index": first_index + i // num_samples, "sample": i % num_samples}
        row |= {"prompt": fields["prompt"][i], "completion": text}
        if isinstance(sampled, EpisodeCompletions):  # the episode, the environment's spans marked
            row["episode"] = sampled.transcripts[i]
        row["tokens"] = int(sampled.mask[i].sum())
        if rewards is not None:
            row["reward"] = rewards[i]
        rows.append(row)
    return rows


def _write(rows: list[dict[str, Any]], out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"lit-rl: wrote {len(rows)} completions to {out}", file=sys.stderr)
        return
    for row in rows:
        reward = f", reward {row['reward']:g}" if "reward" in row else ""
        print(f"### prompt {row['index']}, sample {row['sample']}{reward}")
        print(f"{row['prompt']}\n---\n{row.get('episode', row['completion'])}\n")
