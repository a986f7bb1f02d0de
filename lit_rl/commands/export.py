"""``lit-rl export``: a checkpoint's policy as a directory plain ``transformers`` (merged
weights) or ``peft`` (the adapter alone) loads, with its tokenizer."""

import argparse
import sys
from pathlib import Path

import torch

from lit_rl.commands.policy import is_checkpoint, load_policy
from lit_rl.models import save_policy

HELP = "write a checkpoint's policy as a transformers (or peft adapter) directory"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .ckpt file or a sharded checkpoint folder (FSDP2)")
    parser.add_argument("out", type=Path, help="the directory to write (replaced atomically)")
    parser.add_argument("--config", type=Path, help="the run's settings (default: its config.yaml)")
    parser.add_argument(
        "--adapter-only", action="store_true", help="the LoRA adapter alone, for peft"
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="of the weights (default: float32 when merged "
        "from LoRA, else the checkpoint's)"
    )  # fmt: skip


def run(args: argparse.Namespace) -> Path:
    if not is_checkpoint(Path(args.checkpoint)):
        raise ValueError(
            f"'{args.checkpoint}' is not a checkpoint (a .ckpt file or a folder of shards): "
            "a model directory or hub id loads in transformers as it is"
        )
    module = load_policy(args.checkpoint, args.config).module
    dtype = DTYPES[args.dtype] if args.dtype else None
    out = save_policy(module.policy, module.tokenizer, args.out, None, dtype, args.adapter_only)
    what = "the adapter (peft)" if args.adapter_only else "merged weights (transformers)"
    print(f"lit-rl: wrote {what} and the tokenizer to {out}", file=sys.stderr)
    return out
