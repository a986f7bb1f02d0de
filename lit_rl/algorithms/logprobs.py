"""Token log-probabilities and entropies from logits, in float32, a chunk of rows at a time."""

import torch


def _at_least_float32(rows: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 logits are upcast; float64 (tests, references) stays float64.
    return rows.to(torch.promote_types(rows.dtype, torch.float32))


# Rows (tokens) per chunk: bounds the float32 copy of the logits to chunk_size x V at a time.
DEFAULT_CHUNK_SIZE = 256


def token_logprobs(
    logits: torch.Tensor,  # [N, T, V] any float dtype
    labels: torch.Tensor,  # [N, T] long
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:  # [N, T] float32
    """``log softmax(logits / temperature)[label]`` per token.

    The log-softmax runs in float32 even for bf16 logits, ``chunk_size`` rows at a time, as
    ``logit[label] - logsumexp(logits)``: no full [N, T, V] float32 tensor is built (autograd
    still keeps what backward needs, one chunk's worth per chunk).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    flat_logits = logits.reshape(-1, logits.shape[-1])  # [N*T, V]
    flat_labels = labels.reshape(-1)  # [N*T]
    chunks = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        rows = _at_least_float32(flat_logits[start : start + chunk_size]) / temperature
        picked = rows.gather(1, flat_labels[start : start + chunk_size, None]).squeeze(1)
        chunks.append(picked - torch.logsumexp(rows, dim=-1))
    return torch.cat(chunks).view(labels.shape)


@torch.no_grad()
def entropy_from_logits(
    logits: torch.Tensor,  # [N, T, V]
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:  # [N, T] float32
    """Entropy ``-sum_v p_v log p_v`` of the token distribution, a monitoring statistic."""
    flat_logits = logits.reshape(-1, logits.shape[-1])
    chunks = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        rows = _at_least_float32(flat_logits[start : start + chunk_size])
        logp = torch.log_softmax(rows / temperature, -1)
        chunks.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(chunks).view(logits.shape[:-1])
