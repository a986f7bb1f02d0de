"""One training run on a fixed global batch, for the multi-process tests (test_strategies.py).

Run by ``torch.distributed.run`` (2 processes, gloo) or in the test process itself (1 process).
The completions are fixed by ``FixedEngine``, so sampling is out of the comparison: every world
size trains on the same global batch, each process on its own prompts (whole groups), and the
results must agree. Writes to ``--out``: the logged metrics, the full state dict of the models
(gathered from the shards), and the whole training state (weights, optimizer, counters) as the
run ended and, for a resumed run, as it stood once the checkpoint was loaded.
"""

import argparse
import copy
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.strategies import DDPStrategy
from peft import LoraConfig
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader

from lit_rl.callbacks import RolloutCallback
from lit_rl.callbacks.checkpoint import export_policy
from lit_rl.data import generate_problems
from lit_rl.environments import Episodes
from lit_rl.models import Sequences, completion_logprobs, load_tokenizer
from lit_rl.modules import GRPOModule, PolicyModule, PPOModule
from lit_rl.rewards import EpisodeReward, WeightedSum
from lit_rl.rollout import (
    Generation,
    GenerationRequest,
    InProcessEngine,
    completion_mask_from_eos,
)
from lit_rl.strategies import FSDP2Strategy, full_state_dict
from lit_rl.strategies.checkpoint import parameter_names
from tests.byo_reward import ContainsTargetCharacter
from tests.environments.toy import Guess

NUM_PROMPTS = 4  # the global batch: 4 prompts x G = 2 completions
GROUP = 2
LENGTH = 7  # completion tokens at most


class FixedEngine(InProcessEngine):
    """Completions that depend only on the prompt's tokens and the sample's index in its
    group: the same rows whatever the batch, the padding or the number of processes; their
    logprobs are the synced policy's."""

    name = "FixedEngine"

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> Generation:
        model = self.synced_policy()
        # The engine must see whole weights (gathered once for the rollout), never shards.
        sharded = [n for n, p in model.named_parameters() if isinstance(p, DTensor)]
        if sharded:
            raise AssertionError(f"the engine was handed sharded weights: {sharded[:2]}")
        rows = []
        for ids, mask in zip(request.prompt_ids, request.prompt_mask.bool(), strict=True):
            key = int((ids[mask] * torch.arange(1, int(mask.sum()) + 1)).sum())
            for g in range(request.num_generations):
                generator = torch.Generator().manual_seed(key * 10 + g)
                row = torch.randint(10, 90, (LENGTH,), generator=generator)
                stop = int(torch.randint(2, LENGTH + 1, (1,), generator=generator))
                if stop < LENGTH:  # an EOS ends the row early, padding after it
                    row[stop - 1] = request.eos_token_ids[0]
                    row[stop:] = request.pad_token_id
                rows.append(row)
        completion_ids = torch.stack(rows)
        prompt_ids, prompt_mask = request.repeated_prompts()
        sequences = Sequences(
            torch.cat([prompt_ids, completion_ids], 1),
            torch.cat([prompt_mask, torch.ones_like(completion_ids)], 1),
            LENGTH,
        )
        logprobs, _ = completion_logprobs(model, sequences, request.sampling.temperature, 64)
        sampled = completion_mask_from_eos(completion_ids, request.eos_token_ids)
        return self.answer(completion_ids, logprobs.masked_fill(~sampled, 0.0))


class FixedPrompts(LightningDataModule):
    """Every step the same global batch of prompts; each process takes its share of them."""

    def __init__(self, model_dir: str, steps: int) -> None:
        super().__init__()
        self.tokenizer = load_tokenizer(model_dir)
        self.steps = steps
        self.rows = generate_problems(NUM_PROMPTS, seed=3)

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        per_rank = NUM_PROMPTS // world
        mine = self.rows[rank * per_rank : (rank + 1) * per_rank]
        return DataLoader([mine] * self.steps, batch_size=None, collate_fn=self.collate)

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [r["question"] for r in rows]
        ids = [self.tokenizer(p).input_ids for p in prompts]
        padded = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        return {
            "input_ids": padded["input_ids"],
            "attention_mask": padded["attention_mask"],
            "prompt": prompts,
            "answer": [str(r["answer"]) for r in rows],
        }


def build_module(case: str, model_dir: str) -> PolicyModule:
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    common = dict(
        reward=ContainsTargetCharacter(field="answer"),
        model=model_dir,
        dtype="float32",
        num_generations=GROUP,
        max_completion_length=LENGTH,
        learning_rate=1e-2,
    )
    if case == "grpo_lora":  # token mean over the global batch: ranks' token counts differ
        # (CISPO's weight on each token: the surrogates are per token, the aggregation splits)
        return GRPOModule(**common, lora=lora, loss_type="dapo", surrogate="cispo")
    if case == "grpo_full":  # SAPO's gate, GRPO's sequence mean
        return GRPOModule(**{**common, "learning_rate": 1e-3}, lora=None, surrogate="sapo")
    if case == "ppo_lora":
        return PPOModule(**common, lora=lora, ppo_epochs=2, kl_target=0.01)
    if case == "ppo_episodes":  # GAE over turns; an environment that ignores its seed (the
        # processes draw other seeds than one process), so the episodes are the same
        episodes = Episodes(partial(Guess, "no, again"), max_turns=3, max_episode_tokens=40)
        # The environment's reward, and the last turn's by ContainsTargetCharacter (with a
        # length bonus: returns with a spread, so the value statistics are defined).
        reward = WeightedSum([EpisodeReward(), ContainsTargetCharacter(field="answer")])
        return PPOModule(**{**common, "reward": reward}, lora=lora, ppo_epochs=2, episodes=episodes)
    raise ValueError(case)


def training_state(trainer: Trainer, module: PolicyModule) -> dict[str, Any]:
    """Everything a checkpoint restores, gathered whole (a collective under FSDP2: every
    process calls it) and copied (the run goes on): the models' weights, the optimizer's state
    keyed by parameter name, the update loop's shuffle and guard, the rollout counters and
    PPO's KL coefficient."""
    (rollout,) = [c for c in trainer.callbacks if isinstance(c, RolloutCallback)]
    state = {
        "weights": {k: v.clone() for k, v in full_state_dict(module.models).items()},
        "optimizer": _optimizer_state(module, trainer.optimizers[0]),
        "policy_update": copy.deepcopy(module.policy_update.state_dict()),
        "rollout": rollout.state_dict(),
    }
    if isinstance(module, PPOModule):
        state["kl_coef"] = module.kl_controller.coef
    return state


def _optimizer_state(module: PolicyModule, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Each parameter's optimizer state by name, whole (a shard's ``DTensor`` gathered). By
    hand: torch's ``get_optimizer_state_dict`` steps an optimizer that has no state yet."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[str, Any] = {}
    for name, param in zip(parameter_names(module, optimizer.param_groups), params, strict=True):
        values = optimizer.state.get(param, {})
        state[name] = {
            k: (v.full_tensor() if isinstance(v, DTensor) else v).cpu().clone()
            for k, v in values.items()
        }
    return {"state": state, "lr": [group["lr"] for group in optimizer.param_groups]}


class Metrics(Callback):
    """The logged metrics of every step; one random draw per process at the first step (each
    process must sample with its own random numbers); the training state as it stood when
    training started (after a checkpoint's restore)."""

    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []
        self.draws: list[float] = []
        self.restored: dict[str, Any] = {}

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.restored = training_state(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if not self.draws:
            draw = torch.rand(1)
            self.draws = trainer.strategy.all_gather(draw).flatten().tolist()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def strategy_for(name: str) -> Any:
    if name == "fsdp2":
        return FSDP2Strategy(mixed_precision="none")
    if name == "fsdp2-bf16":
        return FSDP2Strategy(mixed_precision="bf16")
    if name == "ddp":
        return DDPStrategy(find_unused_parameters=True)
    return "auto"


def run(
    case: str,
    strategy: str,
    devices: int,
    model_dir: str,
    steps: int,
    out: Path,
    save_at: Path | None = None,
    resume: Path | None = None,
) -> None:
    torch.manual_seed(0)
    module = build_module(case, model_dir)
    module.engine = FixedEngine()
    metrics = Metrics()
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy_for(strategy),
        # ``steps`` Experiences; PPO takes ppo_epochs optimizer steps on each
        max_steps=steps * module.policy_update.plan.optimizer_steps,
        callbacks=[RolloutCallback(), metrics],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    trainer.fit(module, FixedPrompts(model_dir, steps), ckpt_path=resume)
    if save_at is not None:
        trainer.save_checkpoint(save_at)
    final = training_state(trainer, module)
    export_policy(trainer, module, out.with_suffix(".policy"))
    if trainer.is_global_zero:
        result = {
            "metrics": metrics.logged,
            "state": final["weights"],
            "draws": metrics.draws,
            "final": final,
            "restored": metrics.restored,
        }
        torch.save(result, out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", required=True)
    parser.add_argument(
        "--strategy", choices=["single", "fsdp2", "fsdp2-bf16", "ddp"], required=True
    )
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--steps", type=int, default=1, help="Experiences to train on")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--save", action="store_true", help="write <case>.ckpt at the end")
    parser.add_argument("--resume-dir", type=Path, help="resume from <dir>/<case>.ckpt")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for case in args.cases.split(","):
        run(
            case,
            args.strategy,
            args.devices,
            args.model_dir,
            args.steps,
            args.out_dir / f"{case}.pt",
            args.out_dir / f"{case}.ckpt" if args.save else None,
            args.resume_dir / f"{case}.ckpt" if args.resume_dir else None,
        )
    # Lightning leaves the process group up; a gloo group torn down by the interpreter's exit
    # instead can abort a process at exit ("terminate called without an active exception",
    # seen once in a fresh clone's run of the resume test).
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
