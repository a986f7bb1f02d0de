"""The conformance table: lit_rl's losses and gradients beside naive loops of the papers'
equations, on one fixed batch.

Every row is one configuration (advantage estimator x where the KL goes and which estimator x
loss aggregation and ratio). The lit_rl column runs the library (its estimators, reward
shaping and ``grpo_loss`` / ``ppo_policy_loss``); the naive column re-derives the same number
with Python loops over completions and tokens written from the equations, sharing no code
with the library; both gradients are d loss / d log pi of every token. The suite runs this
module (``tests/algorithms/test_conformance.py``): a row whose two columns disagree, or a
table that differs from ``docs/algorithms/conformance.md``, fails it.

Rewrite the document after an intended change: ``make conformance``.
"""

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lit_rl.algorithms import (
    grpo_loss,
    kl_penalty,
    ppo_policy_loss,
    token_level_rewards,
)
from lit_rl.experience import (
    GAE,
    AdvantageEstimator,
    AdvantageInputs,
    GroupNormalized,
    LeaveOneOut,
    ProcessSupervised,
    ReinforcePlusPlus,
)

DOC = Path(__file__).parents[2] / "docs" / "algorithms" / "conformance.md"
G, NUM_PROMPTS, T = 3, 2, 5  # group size, prompts, padded completion length
N = G * NUM_PROMPTS
MAX_COMPLETION_LENGTH = 8  # Dr. GRPO's constant: the budget, longer than any completion here
EPSILON, EPSILON_HIGH, BETA, KL_COEF = 0.2, 0.28, 0.04, 0.05
GSPO_EPSILON, GSPO_EPSILON_HIGH = 3e-4, 4e-4
GAMMA, LAM = 1.0, 0.95
SAPO_TAU_POS, SAPO_TAU_NEG = 1.0, 1.05  # SAPO's temperatures (the paper's)
# Each loss of the table: (lit_rl's loss_type, its surrogate). CISPO's own aggregation is DAPO's
# token mean (MiniMax-M1 §3.1), SAPO's GRPO's sequence mean (Gao et al., 2025, §3); the others
# pair them with the other aggregation.
SURROGATE_LOSSES = {
    "cispo": ("dapo", "cispo"),
    "cispo_seq_mean": ("grpo", "cispo"),
    "sapo": ("grpo", "sapo"),
    "sapo_token_mean": ("dapo", "sapo"),
}
AGREEMENT = 1e-10  # float64 throughout: the two columns agree to rounding


@dataclass(frozen=True)
class Batch:
    """One fixed batch, float64: N = 6 completions (2 prompts x G = 3), T = 5 tokens."""

    logprobs: torch.Tensor  # [N, T] log pi, the leaf the gradients are taken against
    old_logprobs: torch.Tensor  # [N, T] log pi_old (0.3 nats of noise: some ratios clip)
    ref_logprobs: torch.Tensor  # [N, T] log pi_ref
    mask: torch.Tensor  # [N, T] bool, lengths 5, 2, 4, 1, 3, 5
    rewards: torch.Tensor  # [N] outcome rewards
    values: torch.Tensor  # [N, T] a critic's V(s_t)
    step_rewards: torch.Tensor  # [N, 2]
    step_ends: torch.Tensor  # [N, 2] token index, -1 = padding step


def fixed_batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    f64 = dict(dtype=torch.float64)
    logprobs = -torch.rand(N, T, generator=g, **f64) * 2 - 0.1
    lengths = torch.tensor([5, 2, 4, 1, 3, 5])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    step_ends = torch.tensor([[1, 4], [1, -1], [2, 3], [0, -1], [0, 2], [3, 4]])
    return Batch(
        logprobs=logprobs,
        old_logprobs=logprobs + 0.3 * torch.randn(N, T, generator=g, **f64),
        ref_logprobs=logprobs + 0.2 * torch.randn(N, T, generator=g, **f64),
        mask=mask,
        rewards=torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 1.0], **f64),
        values=0.5 * torch.randn(N, T, generator=g, **f64),
        step_rewards=torch.tensor(
            [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 1.0], [0.0, 0.0]], **f64
        ),
        step_ends=step_ends,
    )


# ---- naive loops, from the equations ------------------------------------------------------


def naive_kl(logprob: torch.Tensor, ref_logprob: torch.Tensor, estimator: str) -> torch.Tensor:
    """Schulman (2020) per token; DeepSeekMath Eq. 4 is k3."""
    log_ratio = ref_logprob - logprob  # log(pi_ref / pi)
    return {
        "k1": -log_ratio,
        "k2": log_ratio * log_ratio / 2,
        "k3": torch.exp(log_ratio) - log_ratio - 1,
    }[estimator]


def _length(b: Batch, i: int) -> int:
    return int(b.mask[i].sum())


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _sample_std(xs: list[float]) -> float:
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def naive_token_rewards(b: Batch, kl: str | None) -> list[list[float]]:
    """r_t = R [t = last] - kl_coef KL(pi_old || pi_ref)_t (Ziegler et al., 2019, Eq. 2)."""
    rows = []
    for i in range(N):
        row = []
        for t in range(_length(b, i)):
            r = float(b.rewards[i]) if t == _length(b, i) - 1 else 0.0
            if kl is not None:
                r -= KL_COEF * float(naive_kl(b.old_logprobs[i, t], b.ref_logprobs[i, t], kl))
            row.append(r)
        rows.append(row)
    return rows


def _whiten(rows: list[list[float]]) -> list[list[float]]:
    flat = [x for row in rows for x in row]
    m = _mean(flat)
    var = sum((x - m) ** 2 for x in flat) / (len(flat) - 1)
    return [[(x - m) / math.sqrt(var + 1e-8) for x in row] for row in rows]


def naive_advantages(b: Batch, estimator: str, kl: str | None) -> list[list[float]]:
    """A[i][t] for each counted token, by each estimator's paper."""
    rewards = naive_token_rewards(b, kl)
    returns = [sum(row) for row in rewards]  # each completion's return
    out: list[list[float]] = []
    if estimator in ("group_normalized", "dr_grpo", "rloo"):
        for i in range(N):
            group = returns[i // G * G : i // G * G + G]
            if estimator == "group_normalized":  # DeepSeekMath §4.1.2
                a = (returns[i] - _mean(group)) / (_sample_std(group) + 1e-4)
            elif estimator == "dr_grpo":  # Liu et al., 2025, §3.2
                a = returns[i] - _mean(group)
            else:  # RLOO, Ahmadian et al., 2024, Eq. 5
                a = returns[i] - (sum(group) - returns[i]) / (G - 1)
            out.append([a] * _length(b, i))
        return out
    if estimator == "process":  # DeepSeekMath §4.1.3
        for i in range(N):
            first = i // G * G
            group = [
                float(b.step_rewards[k, j])
                for k in range(first, first + G)
                for j in range(b.step_ends.shape[1])
                if b.step_ends[k, j] >= 0
            ]
            m, s = _mean(group), _sample_std(group)
            out.append(
                [
                    sum(
                        (float(b.step_rewards[i, j]) - m) / (s + 1e-4)
                        for j in range(b.step_ends.shape[1])
                        if b.step_ends[i, j] >= t
                    )
                    for t in range(_length(b, i))
                ]
            )
        return out
    if estimator == "reinforce++":  # Hu et al., 2025: returns-to-go, whitened over the batch
        to_go = [
            [sum(GAMMA ** (s - t) * row[s] for s in range(t, len(row))) for t in range(len(row))]
            for row in rewards
        ]
        return _whiten(to_go)
    if estimator == "gae":  # Schulman et al., 2016, Eq. 16, then whitened
        raw = []
        for i in range(N):
            length = _length(b, i)
            v = [float(b.values[i, t]) for t in range(length)] + [0.0]
            deltas = [rewards[i][t] + GAMMA * v[t + 1] - v[t] for t in range(length)]
            raw.append(
                [
                    sum((GAMMA * LAM) ** (s - t) * deltas[s] for s in range(t, length))
                    for t in range(length)
                ]
            )
        return _whiten(raw)
    raise ValueError(estimator)


def naive_loss(b: Batch, advantages: list[list[float]], loss: str, kl: str | None) -> torch.Tensor:
    """The negated objective, with Python loops over completions and tokens."""
    low, high = (GSPO_EPSILON, GSPO_EPSILON_HIGH) if loss == "gspo" else (EPSILON, EPSILON_HIGH)
    per_completion: list[list[torch.Tensor]] = []
    for i in range(N):
        length = _length(b, i)
        log_ratios = [b.logprobs[i, t] - b.old_logprobs[i, t] for t in range(length)]
        if loss == "gspo":  # Zheng et al., 2025, Eq. 7: (pi/pi_old)^(1/|o|) on every token
            sequence_ratio = torch.exp(sum(log_ratios) / length)
            ratios = [sequence_ratio] * length
        else:
            ratios = [torch.exp(x) for x in log_ratios]
        terms = []
        for t in range(length):
            a = advantages[i][t]
            if loss.startswith("cispo"):  # MiniMax-M1 §3.1: sg(clip(r)) A log pi
                weight = torch.clamp(ratios[t], 1 - low, 1 + high).detach()
                term = weight * a * b.logprobs[i, t]
            elif loss.startswith("sapo"):  # SAPO §3: 4/tau sigmoid(tau (r - 1)) A
                tau = SAPO_TAU_POS if a > 0 else SAPO_TAU_NEG
                term = 4 / tau / (1 + torch.exp(-tau * (ratios[t] - 1))) * a
            else:
                clipped = torch.clamp(ratios[t], 1 - low, 1 + high)
                term = torch.minimum(ratios[t] * a, clipped * a)
            if kl is not None:
                term = term - BETA * naive_kl(b.logprobs[i, t], b.ref_logprobs[i, t], kl)
            terms.append(term)
        per_completion.append(terms)
    num_tokens = sum(len(terms) for terms in per_completion)
    if loss in (
        "grpo",
        "gspo",
        "sapo",
        "cispo_seq_mean",
    ):  # DeepSeekMath Eq. 3: 1/G sum_i 1/|o_i| sum_t
        objective = sum(sum(terms) / len(terms) for terms in per_completion) / N
    elif loss == "dr_grpo":  # Liu et al., 2025: a constant normaliser
        objective = sum(sum(terms) for terms in per_completion) / (N * MAX_COMPLETION_LENGTH)
    elif loss in ("dapo", "bnpo", "ppo", "cispo", "sapo_token_mean"):  # DAPO Eq. 12; token means
        objective = sum(sum(terms) for terms in per_completion) / num_tokens
    else:
        raise ValueError(loss)
    return -objective


# ---- the library ---------------------------------------------------------------------------


ESTIMATORS: dict[str, Callable[[], AdvantageEstimator]] = {
    "group_normalized": GroupNormalized,
    "dr_grpo": lambda: GroupNormalized(scale_by_std=False),
    "rloo": LeaveOneOut,
    "reinforce++": ReinforcePlusPlus,
    "process": ProcessSupervised,
    "gae": lambda: GAE(gamma=GAMMA, lam=LAM),
}
LOSSES = ["grpo", "dr_grpo", "dapo", "bnpo", "gspo", "ppo", *SURROGATE_LOSSES]
KL_ESTIMATORS = ["k1", "k2", "k3"]


def library_advantages(b: Batch, estimator: str, kl: str | None) -> torch.Tensor:  # [N, T]
    kl_values = None if kl is None else kl_penalty(b.old_logprobs, b.ref_logprobs, kl)
    inputs = AdvantageInputs(
        rewards=b.rewards,
        token_rewards=token_level_rewards(b.rewards, b.mask, kl_values, KL_COEF),
        completion_mask=b.mask,
        group_size=G,
        values=b.values,
        step_rewards=b.step_rewards,
        step_ends=b.step_ends,
    )
    advantages, _ = ESTIMATORS[estimator]()(inputs)
    return advantages


def library_loss(b: Batch, advantages: torch.Tensor, loss: str, kl: str | None) -> torch.Tensor:
    beta = 0.0 if kl is None else BETA
    if loss == "ppo":
        value, _ = ppo_policy_loss(
            b.logprobs, b.old_logprobs, advantages, b.mask, EPSILON, EPSILON_HIGH,
            ref_logprobs=b.ref_logprobs, beta=beta, kl_estimator=kl or "k3",
        )  # fmt: skip
        return value
    gspo = loss == "gspo"
    loss_type, surrogate = SURROGATE_LOSSES.get(loss, ("grpo" if gspo else loss, "clip"))
    value, _ = grpo_loss(
        b.logprobs,
        b.old_logprobs,
        b.ref_logprobs,
        advantages,
        b.mask,
        epsilon=GSPO_EPSILON if gspo else EPSILON,
        epsilon_high=GSPO_EPSILON_HIGH if gspo else EPSILON_HIGH,
        beta=beta,
        loss_type=loss_type,
        kl_estimator=kl or "k3",
        importance_sampling_level="sequence" if gspo else "token",
        max_completion_length=MAX_COMPLETION_LENGTH,
        surrogate=surrogate,
        sapo_temperatures=(SAPO_TAU_POS, SAPO_TAU_NEG),
    )
    return value


# ---- the rows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    estimator: str
    reward_kl: str | None  # KL estimator folded into the reward, or None
    loss: str
    loss_kl: str | None  # KL estimator in the loss, or None
    library_loss: float
    naive_loss: float
    grad_norm: float  # |d loss / d log pi|, the library's
    grad_error: float  # max |library grad - naive grad|

    @property
    def agrees(self) -> bool:
        scale = max(1.0, abs(self.naive_loss))
        return abs(self.library_loss - self.naive_loss) <= AGREEMENT * scale and (
            self.grad_error <= AGREEMENT * max(1.0, self.grad_norm)
        )


def _gradient(loss_of: Callable[[Batch], torch.Tensor], b: Batch) -> tuple[float, torch.Tensor]:
    leaf = b.logprobs.clone().requires_grad_(True)
    batch = Batch(**{**b.__dict__, "logprobs": leaf})
    value = loss_of(batch)
    (grad,) = torch.autograd.grad(value, leaf)
    return float(value.detach()), grad


def row(estimator: str, reward_kl: str | None, loss: str, loss_kl: str | None) -> Row:
    b = fixed_batch()
    library_value, library_grad = _gradient(
        lambda x: library_loss(x, library_advantages(x, estimator, reward_kl), loss, loss_kl), b
    )
    naive_value, naive_grad = _gradient(
        lambda x: naive_loss(x, naive_advantages(x, estimator, reward_kl), loss, loss_kl), b
    )
    return Row(
        estimator,
        reward_kl,
        loss,
        loss_kl,
        library_value,
        naive_value,
        float(library_grad.norm()),
        float((library_grad - naive_grad).abs().max()),
    )


def rows() -> list[Row]:
    """Every loss x KL in the loss (on group-normalised advantages), then every estimator x KL
    in the reward (on the GRPO loss); process supervision takes no KL in the reward."""
    table = [
        row("group_normalized", None, loss, loss_kl)
        for loss in LOSSES
        for loss_kl in [None, *KL_ESTIMATORS]
    ]
    table += [
        row(estimator, reward_kl, "grpo", None)
        for estimator in ESTIMATORS
        for reward_kl in ([None] if estimator == "process" else [None, *KL_ESTIMATORS])
        if (estimator, reward_kl) != ("group_normalized", None)  # the table's first row
    ]
    return table


def markdown(table: list[Row]) -> str:
    def fmt(x: float) -> str:
        return f"{x:.9f}"

    b = fixed_batch()
    ratios = (b.logprobs - b.old_logprobs).exp()[b.mask]
    clipped = float(((ratios < 1 - EPSILON) | (ratios > 1 + EPSILON_HIGH)).double().mean())

    lines = [
        "# Conformance: every loss and estimator against the equations",
        "",
        "Generated by `tests/algorithms/conformance.py` (`make conformance`); the suite "
        "regenerates it and fails on any difference, and on any row whose columns disagree.",
        "",
        f"One fixed batch in float64: {NUM_PROMPTS} prompts x G = {G} completions, T = {T} "
        "tokens of lengths 5, 2, 4, 1, 3, 5, rewards [1, 0, 0.5, 0, 1, 1], log pi_old = log pi "
        f"+ 0.3 N(0, 1) (token ratios {ratios.min():.2f} to {ratios.max():.2f}, "
        f"{clipped:.0%} of the tokens outside [1 - epsilon, 1 + epsilon_high]: the clip acts), "
        "log pi_ref = log pi + "
        f"0.2 N(0, 1); epsilon {EPSILON}, epsilon_high {EPSILON_HIGH} (GSPO {GSPO_EPSILON}, "
        f"{GSPO_EPSILON_HIGH}), beta {BETA}, kl_coef {KL_COEF}, Dr. GRPO's constant "
        f"N x {MAX_COMPLETION_LENGTH}, GAE gamma {GAMMA} lambda {LAM}.",
        "",
        "*lit_rl* runs the library's estimator, reward shaping and loss; *naive* is a Python "
        "loop over completions and tokens written from each paper's equation (no library "
        "code); both gradients are d loss / d log pi over every token (autograd through "
        "each). Agreement: within "
        f"{AGREEMENT:g} (relative) in the loss and in every gradient entry.",
        "",
        "| advantages | KL in the reward | loss | KL in the loss | loss (lit_rl) | loss "
        "(naive) | \\|grad\\| | max \\|Δ grad\\| |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in table:
        error = "< 1e-12" if r.grad_error < 1e-12 else f"{r.grad_error:.1e}"
        lines.append(
            f"| {r.estimator} | {r.reward_kl or '—'} | {r.loss} | {r.loss_kl or '—'} | "
            f"{fmt(r.library_loss)} | {fmt(r.naive_loss)} | {fmt(r.grad_norm)} | {error} |"
        )
    lines += [
        "",
        "Sources: grpo = DeepSeekMath Eq. 3 (Shao et al., 2024); dr_grpo = Dr. GRPO (Liu et al., "
        "2025); dapo = DAPO Eq. 12 (Yu et al., 2025); bnpo = TRL's local-batch token mean (one "
        "micro-batch here, so equal to dapo, as ppo is: both are token means of the same "
        "clipped terms); gspo = GSPO Eq. 5-7 (Zheng et al., 2025); cispo = CISPO (MiniMax-M1, "
        "2025, §3.1: sg(clip(r, 1 - epsilon, 1 + epsilon_high)) A log pi, DAPO's token mean), "
        "cispo_seq_mean the same with GRPO's sequence mean; sapo = SAPO (Gao et al., 2025, "
        f"§3: 4/tau sigmoid(tau (r - 1)) A, tau {SAPO_TAU_POS} where A > 0 else {SAPO_TAU_NEG}, "
        "GRPO's sequence mean), sapo_token_mean the same with DAPO's token mean; ppo = "
        "the clipped surrogate (Schulman et al., 2017) with a token mean; group_normalized = "
        "DeepSeekMath §4.1.2; process = §4.1.3; rloo = Ahmadian et al., 2024, Eq. 5; "
        "reinforce++ = Hu et al., 2025; gae = Schulman et al., 2016, Eq. 16, whitened. KL "
        "estimators k1, k2, k3 as in Schulman (2020); in the reward the KL is of pi_old.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    text = markdown(rows())
    DOC.write_text(text)
    print(f"wrote {DOC}", file=sys.stderr)
