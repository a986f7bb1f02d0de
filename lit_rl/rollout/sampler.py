"""Drawing the next token: temperature, nucleus (top-p), and an exact inverse-CDF draw."""

import torch


def top_p_filter(
    logits: torch.Tensor,  # [N, V] float32, already divided by the temperature
    top_p: float,
) -> torch.Tensor:  # [N, V], -inf outside each row's nucleus
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p``
    (Holtzman et al. 2020); the most likely token always stays. Same rule as transformers'
    ``TopPLogitsWarper``: a token goes when the tokens less likely than it and itself
    together hold at most ``1 - top_p``."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= 1 - top_p
    remove_sorted[:, -1] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sample_tokens(
    logits: torch.Tensor,  # [N, V] raw logits of the next position
    temperature: float,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # ([N] token ids, [N] float32 logprobs)
    """Draw one token per row from ``softmax(logits / temperature)`` restricted to the top-p
    nucleus (or take its argmax when ``greedy``).

    The draw inverts the CDF with one uniform number per row: exactly the categorical
    distribution, at a tenth of the cost of ``torch.multinomial`` over a 49k vocabulary
    (which draws one exponential per vocabulary entry). The returned logprob is of the
    tempered, untruncated distribution: the one the loss scores (``token_logprobs``), so the
    engine's logprobs can be checked against the trainer's.
    """
    scaled = logits.float() / temperature
    logprobs = scaled.log_softmax(dim=-1)
    if greedy:
        tokens = scaled.argmax(dim=-1)
    else:
        probs = top_p_filter(scaled, top_p).softmax(dim=-1)
        cdf = probs.double().cumsum(dim=-1)
        # u in (0, 1]: the draw lands on the first token whose CDF reaches u * total, which
        # has positive probability (u = 0 could pick a leading zero-probability token).
        u = 1.0 - torch.rand(
            (cdf.shape[0], 1), generator=generator, device=cdf.device, dtype=cdf.dtype
        )
        tokens = torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1).clamp_(max=cdf.shape[1] - 1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)
