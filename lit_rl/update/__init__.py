"""The policy update over one Experience, without Lightning: epochs x minibatches x micro-batches
with exact gradient accumulation and per-process shares (``PolicyUpdate``), the optimizer step
that never takes a NaN/inf gradient (``GuardedOptimizerStep``), and AdamW with warm-up."""

from lit_rl.update.guard import GuardedOptimizerStep, refuse_loss_scaling
from lit_rl.update.loop import Accumulate, MicroBatchLoss, PolicyUpdate, UpdatePlan, process_shares
from lit_rl.update.optimizer import AdamWWithWarmup

__all__ = [
    "Accumulate",
    "AdamWWithWarmup",
    "GuardedOptimizerStep",
    "MicroBatchLoss",
    "PolicyUpdate",
    "UpdatePlan",
    "process_shares",
    "refuse_loss_scaling",
]
