"""The one-shot GPU measurement: the default recipe on CUDA in bf16 with each engine that is
installed (HFGenerateEngine and PackedEngine always; VLLMEngine and a vLLM server beside the
trainer where vLLM imports), each synchronous and sampling ahead of the update
(``max_staleness`` 1: ``-ahead``), side by side, and the FSDP2 recipe on the same GPU; one
JSON file out.

The GPU machine has no network and takes at most 64 MiB of files, so neither the embedded
weights nor vLLM travel to it (docs/benchmarks.md, "On a GPU"). The model is SmolLM2-135M's
shape with seeded random weights, built there from a folder holding only its config and
tokenizer (``--shape``; ``python benchmarks/gpu.py --copy-shape shape`` fills it here, 3.5 MB):
the numbers measure the engines and the step, not what the model learns. What that machine
lacks of lit_rl's dependencies (jsonargparse, math-verify, datasets) travels as wheels:

    python benchmarks/gpu.py --shape shape --out $OUT/gpu.json

Runs on a CPU too (``--accelerator cpu --steps 2``), which is how it is checked here.
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from benchmarks.engines_in_training import ENGINES, run  # noqa: E402

FSDP2_RECIPE = "recipes/grpo_math_fsdp.yaml"
SHAPE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def copy_shape(target: Path) -> None:
    """The embedded model's config and tokenizer, without its weights."""
    from lit_rl.models import load_tokenizer

    source = Path(load_tokenizer("embedded").name_or_path)
    target.mkdir(parents=True, exist_ok=True)
    for name in SHAPE_FILES:
        shutil.copy(source / name, target / name)


def make_model(shape: Path, directory: Path) -> None:
    """``shape``'s architecture with random weights (seed 0), beside its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(shape))
    model.save_pretrained(directory)
    for name in SHAPE_FILES[1:]:
        shutil.copy(shape / name, directory / name)


def installed(engine: str) -> bool:
    if not engine.startswith(("vllm", "server")):
        return True
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=Path, default=Path("shape"))
    parser.add_argument("--copy-shape", type=Path, help="write the shape folder and stop")
    parser.add_argument(
        "--engines", default="hf,hf-ahead,packed,packed-ahead,vllm,server,server-ahead"
    )
    parser.add_argument("--accelerator", default="cuda")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.copy_shape:
        copy_shape(args.copy_shape)
        return
    device = {"accelerator": args.accelerator}
    if args.accelerator == "cuda":
        device["gpu"] = torch.cuda.get_device_name(0)
    results: dict[str, Any] = {"device": device, "torch": torch.__version__, "runs": {}}
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "model"
        make_model(args.shape, model)
        common = [f"--trainer.accelerator={args.accelerator}", "--trainer.devices=1"]
        for engine in args.engines.split(","):
            if engine not in ENGINES:
                raise SystemExit(f"unknown engine {engine}: one of {sorted(ENGINES)}")
            if not installed(engine):
                results["runs"][engine] = "not installed"
                continue
            results["runs"][f"{engine} bfloat16"] = run(
                engine, "bfloat16", args.steps, Path(folder), str(model), extra=common
            )
        # FSDP2 keeps float32 weights and computes in bf16 (mixed_precision auto); a bf16
        # policy beside float32 adapters is refused in one shard group.
        results["runs"]["fsdp2 hf auto (bf16 compute)"] = run(
            "hf", "auto", args.steps, Path(folder), str(model), FSDP2_RECIPE, common
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
