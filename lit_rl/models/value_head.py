"""A scalar value model for PPO: a transformer backbone and a linear head."""

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel

from lit_rl.models.dtype import DType, resolve_dtype
from lit_rl.models.loader import resolve_model_path


class ValueModel(nn.Module):
    """``V(s_t)`` for every position: backbone hidden states -> ``nn.Linear(hidden, 1)``.

    The backbone is either a separate (usually small) model loaded by name, or a module the
    caller passes, e.g. the decoder of the policy to share it.
    """

    def __init__(self, backbone: PreTrainedModel) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 1)
        # Start at V = 0 everywhere so early advantages are the rewards themselves.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = "embedded", dtype: DType = "float32"
    ) -> "ValueModel":
        backbone = AutoModel.from_pretrained(
            resolve_model_path(name_or_path), dtype=resolve_dtype(dtype).torch_dtype
        )
        return cls(backbone)

    def forward(
        self,
        input_ids: torch.Tensor,  # [N, L]
        attention_mask: torch.Tensor,  # [N, L]
        position_ids: torch.Tensor | None = None,  # [N, L]
    ) -> torch.Tensor:  # [N, L] float32
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()
