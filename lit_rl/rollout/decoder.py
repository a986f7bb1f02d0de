"""A lean decoder for sampling from Llama-family models (Llama, SmolLM2, Qwen2).

Why it exists: decoding a few sequences is one small matrix product per weight per token, so
the time goes to everything around the products (see docs/benchmarks.md): transformers'
``generate`` spends about as long in Python, cache growth, masks and peft's per-layer dispatch
as in the products themselves. Here one token step is one pass over packed weights (q, k, v
fused into one product), a KV cache allocated once, and the LoRA
adapters applied unmerged in float32 exactly as peft does, so the sampled distribution is the
policy's (merging a small delta into bf16 weights would round most of it away).

On a CPU the base weights are also prepacked for products with a few rows (oneDNN's blocked
layout in bf16, MKL's packed GEMM in float32; what ``torch.compile`` does for CPU linears):
1.6x faster products, bit for bit the same in bf16.

The decoder reads the policy's weights when it is built and holds no state between
generations; ``PackedEngine`` builds one per generation, so it always samples from the
current weights.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedModel

from lit_rl.rollout.fingerprint import adapter_fingerprint, dense_fingerprint

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``PackedDecoder`` cannot run ``model`` exactly, or ``None`` when it can."""
    causal_lm = model.get_base_model() if isinstance(model, PeftModel) else model
    config = getattr(causal_lm, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {SUPPORTED_MODEL_TYPES}"
    if config.hidden_act != "silu":
        return f"hidden_act {config.hidden_act!r} is not 'silu'"
    if getattr(config, "use_sliding_window", False):
        return "sliding-window attention"
    rope_type = getattr(causal_lm.model.rotary_emb, "rope_type", "default")
    if rope_type.startswith(("dynamic", "longrope")):
        return f"rope_type {rope_type!r} changes with the sequence length"
    for name, module in causal_lm.named_modules():
        if not isinstance(module, LoraLayer) or module.disable_adapters or module.merged:
            continue
        for adapter in module.active_adapters:
            if adapter in getattr(module, "lora_variant", {}):
                return f"{name} uses a LoRA variant (DoRA, ...) for adapter {adapter!r}"
            if adapter in module.lora_B and module.lora_B[adapter].bias is not None:
                return f"{name} has a LoRA bias for adapter {adapter!r}"
    return None


@dataclass
class PrepackedWeight:
    """A CPU weight [out, in] reordered once for products with about ``rows`` input rows:
    oneDNN's blocked layout in bf16, MKL's packed GEMM in float32 (the layouts
    ``torch.compile`` uses for CPU linears). bf16 products are bit for bit the plain ones;
    float32 ones differ by accumulation order (~1e-6 relative)."""

    weight: torch.Tensor  # [out, in] plain: MKL's product falls back to it for other row counts
    packed: torch.Tensor  # opaque, usable only by ``linear``
    rows: int

    @classmethod
    def of(cls, weight: torch.Tensor, rows: int) -> "PrepackedWeight | None":
        """``weight`` prepacked, or ``None`` where this device, dtype or build has no such
        layout (GPUs, float16, CPUs without bf16 instructions)."""
        if weight.device.type != "cpu":
            return None
        if weight.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available():
            if torch.ops.mkldnn._is_mkldnn_bf16_supported():
                return cls(weight, torch.ops.mkldnn._reorder_linear_weight(weight, rows), rows)
        if weight.dtype == torch.float32 and torch.backends.mkl.is_available():
            return cls(weight, torch.ops.mkl._mkl_reorder_linear_weight(weight, rows), rows)
        return None

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.weight.dtype == torch.float32:
            return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, bias, self.rows)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")


@dataclass
class PackedLinear:
    """Several linear layers of one input fused along their outputs, with their LoRA
    adapters (if any) kept apart: ``y = x W^T + b + (x A) B`` where A stacks every adapter's
    down-projection (transposed) and B is block-diagonal with each adapter's scaling folded
    in. The adapters' factors are stored transposed and contiguous: the tiny products then
    take a plain ``mm``, half the time of ``F.linear`` at these sizes."""

    weight: torch.Tensor  # [out, in], the model's dtype
    bias: torch.Tensor | None  # [out]
    lora_a: torch.Tensor | None  # [in, R], the adapters' dtype (float32)
    lora_b: torch.Tensor | None  # [R, out]
    prepacked: PrepackedWeight | None = None  # the same weight, faster on a CPU

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        if self.prepacked is not None:
            y = self.prepacked.linear(x, self.bias)
        else:
            y = F.linear(x, self.weight, self.bias)
        if self.lora_a is None:
            return y
        # As peft: the adapter's path in its own dtype, added, then back to the base dtype.
        flat = x.reshape(-1, x.shape[-1]).to(self.lora_a.dtype)
        delta = torch.mm(torch.mm(flat, self.lora_a), self.lora_b)
        return (y + delta.view(*y.shape[:-1], -1)).to(y.dtype)


def _base_and_adapters(
    module: nn.Module,
) -> tuple[nn.Linear, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The plain linear layer under ``module`` and its active adapters' (A, scaling x B)."""
    if not isinstance(module, LoraLayer):
        return module, []
    base = module.get_base_layer()
    if module.disable_adapters or module.merged:  # merged: the base weight already has them
        return base, []
    adapters = [
        (module.lora_A[a].weight, module.lora_B[a].weight * module.scaling[a])
        for a in module.active_adapters
        if a in module.lora_A
    ]
    return base, adapters


def pack_linears(modules: list[nn.Module], rows: int | None = None) -> PackedLinear:
    """Fuse ``modules`` (plain or peft LoRA linears reading the same input) into one; with
    ``rows`` (the batch it will see), the fused base weight is also prepacked where the
    CPU allows (``PrepackedWeight``)."""
    parts = [_base_and_adapters(m) for m in modules]
    bases = [base for base, _ in parts]
    weight = bases[0].weight if len(bases) == 1 else torch.cat([b.weight for b in bases])
    weight = weight.detach()
    prepacked = None if rows is None else PrepackedWeight.of(weight, rows)
    biases = [b.bias for b in bases]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat(
            [
                b if b is not None else base.weight.new_zeros(base.out_features)
                for b, base in zip(biases, bases, strict=True)
            ]
        )
    adapters = [(i, a, b) for i, (_, pairs) in enumerate(parts) for a, b in pairs]
    if not adapters:
        return PackedLinear(weight, None if bias is None else bias.detach(), None, None, prepacked)
    outs = [base.out_features for base in bases]
    offsets = [sum(outs[:i]) for i in range(len(outs))]
    rank = sum(a.shape[0] for _, a, _ in adapters)
    lora_a = torch.cat([a for _, a, _ in adapters]).detach().t().contiguous()
    lora_b = lora_a.new_zeros(rank, sum(outs))
    row = 0
    for i, a, b in adapters:
        lora_b[row : row + a.shape[0], offsets[i] : offsets[i] + outs[i]] = b.detach().t()
        row += a.shape[0]
    return PackedLinear(weight, None if bias is None else bias.detach(), lora_a, lora_b, prepacked)


@dataclass
class PackedLayer:
    input_norm: torch.Tensor  # [D]
    qkv: PackedLinear
    o: PackedLinear
    post_norm: torch.Tensor  # [D]
    gate: PackedLinear
    up: PackedLinear
    down: PackedLinear


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm: normalised in float32, scaled in the model's dtype."""
    normed = F.rms_norm(x.float(), (x.shape[-1],), eps=eps)
    return weight * normed.to(x.dtype)


def apply_rope(
    x: torch.Tensor,  # [N, L, heads, d]
    cos: torch.Tensor,  # [N, L, 1, d]
    signed_sin: torch.Tensor,  # [N, L, 1, d], sin with its first half negated
) -> torch.Tensor:  # [N, L, heads, d]
    """Rotary embedding as transformers applies it, ``x cos + rotate_half(x) sin`` with
    ``rotate_half(x) = (-x2, x1)``: the sign moved into the table, so the rotation is one
    swap of the halves (bit for bit the same products)."""
    halves = x.unflatten(-1, (2, -1))
    return x * cos + halves.flip(-2).flatten(-2) * signed_sin


class KVCache:
    """Keys and values of every layer for ``length`` positions, allocated once."""

    def __init__(
        self,
        num_layers: int,
        rows: int,
        kv_heads: int,
        length: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_layers, rows, kv_heads, length, head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)


def prefill_mask(prompt_valid: torch.Tensor) -> torch.Tensor:  # [N, P] -> [N, 1, P, P]
    """Causal attention over a left-padded prompt's real tokens; a padding query attends to
    itself only, so its (unused) output stays finite."""
    length = prompt_valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=prompt_valid.device).tril()
    itself = torch.eye(length, dtype=torch.bool, device=prompt_valid.device)
    return ((causal & prompt_valid[:, None].bool()) | itself)[:, None]


class PackedDecoder:
    """The policy's decoder as packed tensors: ``forward`` runs ``L`` new positions of ``N``
    rows against a ``KVCache`` and returns the last position's logits. ``rows``, the batch
    it will decode, lets the CPU weights be prepacked (``None`` keeps them plain)."""

    def __init__(self, model: nn.Module, rows: int | None = None) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"PackedDecoder cannot run this model: {reason}")
        causal_lm: PreTrainedModel = (
            model.get_base_model() if isinstance(model, PeftModel) else model
        )
        config = causal_lm.config
        decoder = causal_lm.model
        self.num_heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.eps = config.rms_norm_eps
        self.rotary = decoder.rotary_emb
        self.embed = decoder.embed_tokens.weight.detach()
        self.dtype, self.device = self.embed.dtype, self.embed.device
        self.final_norm = decoder.norm.weight.detach()
        self.lm_head = pack_linears([causal_lm.lm_head], rows)
        self.layers = [
            PackedLayer(
                input_norm=layer.input_layernorm.weight.detach(),
                qkv=pack_linears(
                    [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj],
                    rows,
                ),
                o=pack_linears([layer.self_attn.o_proj], rows),
                post_norm=layer.post_attention_layernorm.weight.detach(),
                gate=pack_linears([layer.mlp.gate_proj], rows),
                up=pack_linears([layer.mlp.up_proj], rows),
                down=pack_linears([layer.mlp.down_proj], rows),
            )
            for layer in decoder.layers
        ]

    def fingerprint(self) -> float:
        """The fingerprint of the weights this decoder samples with, read from its own packed
        copy (``lit_rl.rollout.fingerprint``): its adapters where it has them (fused and with
        their scalings folded in), else its embedding and norms."""
        linears = [self.lm_head]
        for layer in self.layers:
            linears += [layer.qkv, layer.o, layer.gate, layer.up, layer.down]
        pairs = [(lin.lora_a.t(), lin.lora_b.t()) for lin in linears if lin.lora_a is not None]
        if pairs:
            return adapter_fingerprint(pairs)
        norms = [self.final_norm]
        for layer in self.layers:
            norms += [layer.input_norm, layer.post_norm]
        return dense_fingerprint([self.embed, *norms])

    def new_cache(self, rows: int, length: int) -> KVCache:
        return KVCache(
            len(self.layers), rows, self.kv_heads, length, self.head_dim, self.dtype, self.device
        )

    def rotary_table(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:  # 2 x [length, d]
        """cos and signed sin (see ``apply_rope``) of every position below ``length``, as the
        model's own rotary module computes them (so every RoPE scaling it knows is honoured)."""
        positions = torch.arange(length, device=self.device)[None]
        probe = torch.empty(0, dtype=self.dtype, device=self.device)
        cos, sin = self.rotary(probe, positions)
        half = sin.shape[-1] // 2
        return cos[0], torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor,  # [N, L] new tokens
        cos: torch.Tensor,  # [N, L, d] at the new tokens' positions
        signed_sin: torch.Tensor,  # [N, L, d]
        cache: KVCache,
        start: int,  # cache slots [start, start + L) receive the new keys and values
        attention_mask: torch.Tensor,  # [N, 1, L, start + L] bool, True = may attend
    ) -> torch.Tensor:  # [N, V] logits of the last new position, the model's dtype
        rows, length = input_ids.shape
        end = start + length
        q_size, kv_size = self.num_heads * self.head_dim, self.kv_heads * self.head_dim
        cos, signed_sin = cos[:, :, None], signed_sin[:, :, None]
        h = F.embedding(input_ids, self.embed)
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(rms_norm(h, layer.input_norm, self.eps))
            # q and k lie side by side in the fused output: one rotation serves both.
            qk = qkv[..., : q_size + kv_size].unflatten(-1, (-1, self.head_dim))
            q, k = (
                apply_rope(qk, cos, signed_sin)
                .transpose(1, 2)
                .split([self.num_heads, self.kv_heads], dim=1)
            )
            cache.keys[i, :, :, start:end] = k
            cache.values[i, :, :, start:end] = (
                qkv[..., q_size + kv_size :].unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
            )
            attention = F.scaled_dot_product_attention(
                q,
                cache.keys[i, :, :, :end],
                cache.values[i, :, :, :end],
                attn_mask=attention_mask,
                enable_gqa=self.kv_heads != self.num_heads,
            )
            h = h + layer.o(attention.transpose(1, 2).reshape(rows, length, q_size))
            x = rms_norm(h, layer.post_norm, self.eps)
            h = h + layer.down(F.silu(layer.gate(x)) * layer.up(x))
        return self.lm_head(rms_norm(h[:, -1], self.final_norm, self.eps))
