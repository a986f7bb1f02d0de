"""Token log-probabilities and entropies from logits, in float32, a chunk of rows at a time."""

from collections.abc import Iterator

import torch

# Tokens per chunk: bounds the float32 copy of the logits to about chunk_size x V at a time.
DEFAULT_CHUNK_SIZE = 256


def _float_chunks(
    logits: torch.Tensor,  # [N, T, V]
    temperature: float,
    chunk_size: int,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (row slice, tempered logits of those rows in at least float32).

    Chunks run over whole sequences, so a sliced (non-contiguous) ``logits`` is converted
    chunk by chunk without first copying it whole. bf16/fp16 are upcast; float64 stays.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rows_per_chunk = max(1, chunk_size // max(1, logits.shape[1]))
    dtype = torch.promote_types(logits.dtype, torch.float32)
    for start in range(0, logits.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        chunk = logits[rows].to(dtype)
        yield rows, chunk / temperature if temperature != 1.0 else chunk


def token_logprobs(
    logits: torch.Tensor,  # [N, T, V] any float dtype
    labels: torch.Tensor,  # [N, T] long
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:  # [N, T] float32 (float64 for float64 logits)
    """``log softmax(logits / temperature)[label]`` per token.

    Computed with a float32 log-softmax even for bf16 logits, about
    ``chunk_size`` tokens at a time: no full [N, T, V] float32 tensor is built (autograd still
    keeps what backward needs, one chunk's worth per chunk).
    """
    return token_logprobs_with_entropy(logits, labels, temperature, chunk_size, with_entropy=False)[
        0
    ]


def token_logprobs_with_entropy(
    logits: torch.Tensor,  # [N, T, V]
    labels: torch.Tensor,  # [N, T] long
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # ([N, T], [N, T] or None)
    """``token_logprobs`` and, from the same float32 chunks, the entropy
    ``-sum_v p_v log p_v`` of each token distribution (a detached monitoring statistic)."""
    logprobs, entropies = [], []
    for rows, chunk in _float_chunks(logits, temperature, chunk_size):
        # One fused log-softmax serves both outputs (measured faster than logsumexp + exp).
        chunk_logprobs = torch.log_softmax(chunk, dim=-1)  # [n, T, V]
        logprobs.append(chunk_logprobs.gather(-1, labels[rows, :, None]).squeeze(-1))
        if with_entropy:
            with torch.no_grad():
                entropies.append(-(chunk_logprobs.exp() * chunk_logprobs).sum(-1))
    return torch.cat(logprobs), torch.cat(entropies) if with_entropy else None
