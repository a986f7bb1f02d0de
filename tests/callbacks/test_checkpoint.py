"""PolicyCheckpoint's own behaviour: keep the newest k, write atomically, clean what a killed
write left, refuse modules it cannot export."""

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_rl.callbacks import PolicyCheckpoint, RolloutCallback
from lit_rl.data import PromptDataModule
from lit_rl.modules import GRPOModule
from lit_rl.strategies import AtomicCheckpointIO
from tests.conftest import tiny_module_args


def test_keep_last_keeps_the_newest_k_and_last(tiny_model_dir, tmp_path):
    checkpoint = PolicyCheckpoint(
        dirpath=tmp_path, every_n_train_steps=1, keep_last=2, save_last=True
    )
    (tmp_path / ".last.ckpt.partial").write_bytes(b"half")  # a killed write's
    trainer = Trainer(
        max_steps=4,
        callbacks=[RolloutCallback(), checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    data = PromptDataModule(tokenizer=str(tiny_model_dir), batch_size=2, num_train=8, num_val=2)
    trainer.fit(GRPOModule(**tiny_module_args(tiny_model_dir)), data)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["epoch=0-step=3.ckpt", "epoch=0-step=4.ckpt", "last.ckpt", "policy"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 4


def test_keep_last_must_be_positive():
    with pytest.raises(ValueError, match="keep_last must be >= 1, got 0"):
        PolicyCheckpoint(keep_last=0)


def test_a_users_own_checkpoint_io_is_kept(tiny_model_dir, tmp_path):
    class MyIO(TorchCheckpointIO):
        pass

    checkpoint = PolicyCheckpoint(dirpath=tmp_path)
    trainer = Trainer(logger=False, plugins=[MyIO()], enable_progress_bar=False)
    checkpoint.setup(trainer, GRPOModule(**tiny_module_args(tiny_model_dir)), "fit")
    assert type(trainer.strategy.checkpoint_io) is MyIO


def test_only_policy_modules_are_exported(tmp_path):
    with pytest.raises(TypeError, match="use lightning's ModelCheckpoint for other modules"):
        PolicyCheckpoint(dirpath=tmp_path).setup(Trainer(logger=False), LightningModule(), "fit")
