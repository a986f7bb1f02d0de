"""Every bad input a new user meets, run through the ``lit-rl`` CLI, with the message it gets.

``python -m tests.reliability.bad_inputs`` (``make reliability``) rewrites the table in
docs/reliability.md from these runs; test_bad_inputs.py runs them again and fails when a
message changed, is not short, hides behind a traceback, or the document is stale.

Each case is the default recipe on a tiny local model (so that it runs in a second) with one
thing wrong. Paths in messages are shown relative to the working folder of the run.
"""

import contextlib
import io
import json
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lit_rl.cli import main

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"
ROWS = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(8)]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


@dataclass
class BadInput:
    what: str  # the bad input, in words
    args: list[str]  # what is added to the command line
    expect: str  # a phrase the message must hold
    files: dict[str, str] = field(default_factory=dict)  # written in the working folder first
    status: int = 2  # the exit status: 2 = refused input; 1 = an exception (a bug, e.g. a reward's)
    warning: bool = False  # the run goes on (status 0) with a warning instead
    steps: int = 0  # optimizer steps to run: 1 where the error shows in the first rollout


CASES = [
    BadInput(
        "an unknown option of the module", ["--model.init_args.bogus=1"], "'bogus' is not accepted"
    ),
    BadInput("an unknown trainer flag", ["--trainer.bogus=3"], "unrecognized arguments"),
    BadInput(
        "a value of the wrong type",
        ["--model.init_args.num_generations=abc"],
        "Expected a <class 'int'>",
    ),
    BadInput("a value outside a choice", ["--model.init_args.loss_type=nope"], "Got value: nope"),
    BadInput(
        "a reward class_path that does not import",
        ["--model.init_args.reward.class_path=nowhere.Reward"],
        "No module named 'nowhere'",
    ),
    BadInput(
        "GRPO with one completion per prompt",
        ["--model.init_args.num_generations=1"],
        "num_generations must be >= 2",
    ),
    BadInput(
        "a negative learning rate",
        ["--model.init_args.learning_rate=-1"],
        "learning_rate must be > 0",
    ),
    BadInput(
        "a model directory that does not exist",
        ["--model.init_args.model=./no/such/model"],
        "does not exist",
    ),
    BadInput(
        "LoRA targets that match nothing",
        ["--model.init_args.lora.target_modules=[nothing]"],
        "match no module",
    ),
    BadInput(
        "LoRA targets of which one matches",
        ["--model.init_args.lora.target_modules=[q_proj,nothing]"],
        "['nothing'] match no module",
    ),
    BadInput(
        "a data file that does not exist",
        ["--data.init_args.train_data=missing.jsonl"],
        "does not exist",
    ),
    BadInput(
        "a data file without a suffix",
        ["--data.init_args.train_data=tasks"],
        "no .jsonl/.json/.parquet suffix",
        {"tasks": jsonl(ROWS)},
    ),
    BadInput(
        "an empty data file",
        ["--data.init_args.train_data=empty.jsonl"],
        "has no rows",
        {"empty.jsonl": ""},
    ),
    BadInput(
        "a malformed line in a data file",
        ["--data.init_args.train_data=bad.jsonl"],
        "line 2 is not valid JSON",
        {"bad.jsonl": jsonl(ROWS[:1]) + '{"question": "What is 2 + 1?", "answer": \n'},
    ),
    BadInput(
        "a data file smaller than one batch",
        ["--data.init_args.train_data=one.jsonl"],
        "fewer than one batch",
        {"one.jsonl": jsonl(ROWS[:1])},
    ),
    BadInput(
        "a question field the data lacks",
        ["--data.init_args.prompt_field=problem"],
        "has no field 'problem'",
    ),
    BadInput(
        "an answer field the data lacks",
        ["--data.init_args.train_data=solutions.jsonl"],
        "reads the dataset field(s) ['answer']",
        {
            "solutions.jsonl": jsonl(
                [{"question": r["question"], "solution": r["answer"]} for r in ROWS]
            )
        },
    ),
    BadInput(
        "a prompt longer than max_prompt_length",
        ["--data.init_args.max_prompt_length=8"],
        "longer than max_prompt_length",
    ),
    BadInput(
        "prompt + completion beyond the model's context",
        ["--model.init_args.max_completion_length=100000"],
        "exceeds the model's context",
    ),
    BadInput(
        "a reward that returns a list",
        ["--model.init_args.reward=tests.reliability.probes.ListTotalReward"],
        "gave 'total' as list",
        steps=1,
    ),
    BadInput(
        "a reward that raises",
        ["--model.init_args.reward=tests.reliability.probes.RaisingReward"],
        "reward 'raising' raised ZeroDivisionError on training batch 0",
        status=1,
        steps=1,
    ),
    BadInput("a checkpoint that does not exist", ["--ckpt_path=none.ckpt"], "not found"),
    BadInput(
        "a truncated checkpoint",
        ["--ckpt_path=cut.ckpt"],
        "is truncated or not a checkpoint",
        {"cut.ckpt": "PK\x03\x04 half a checkpoint"},
    ),
    BadInput(
        "float16 weights on a CPU",
        ["--model.init_args.dtype=float16"],
        "float16",
        warning=True,
        status=0,
        steps=1,
    ),
]


def base_args(model_dir: Path) -> list[str]:
    """The default recipe on the tiny model, small enough to reach any error in a second."""
    return [
        "fit",
        "--config",
        str(ROOT / "recipes" / "grpo_math.yaml"),
        f"--model.init_args.model={model_dir}",
        "--model.init_args.num_generations=2",
        "--model.init_args.max_completion_length=4",
        "--model.init_args.lora.target_modules=[q_proj,v_proj]",
        "--model.init_args.evaluation.num_samples=1",
        "--data.init_args.num_train=8",
        "--data.init_args.num_val=2",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


@contextlib.contextmanager
def working_folder(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@dataclass
class Outcome:
    status: int
    message: str  # what the user reads: the lit-rl error, the warning, or the last traceback line
    stderr: str


def run(case: BadInput, model_dir: Path, workdir: Path) -> Outcome:
    """Run ``case`` through ``lit_rl.cli.main`` in ``workdir``, as ``lit-rl`` would."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, text in case.files.items():
        (workdir / name).write_text(text)
    args = [*base_args(model_dir), f"--trainer.max_steps={case.steps}", *case.args]
    stderr = io.StringIO()
    status = 0
    import_path = list(sys.path)  # main() puts the working folder on it, as lit-rl does
    argv, sys.argv = sys.argv, ["lit-rl"]  # the command line is ``args`` alone
    recorded = warnings.catch_warnings(record=True)  # as printed, also under pytest
    with contextlib.redirect_stderr(stderr), working_folder(workdir), recorded as caught:
        warnings.simplefilter("always")  # main() puts its own filters in front of this one
        try:
            main(args)
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
        except Exception:  # noqa: BLE001 (shown as the user sees it: the traceback's end)
            traceback.print_exc(file=sys.stderr)
            status = 1
        finally:
            sys.path[:] = import_path
            sys.argv = argv
    shown = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    text = (stderr.getvalue() + shown).replace(str(model_dir), "<model>")
    text = text.replace(str(workdir) + "/", "")
    return Outcome(status, message_of(text, case), text)


def message_of(stderr: str, case: BadInput) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    if case.warning:
        return next((line for line in lines if case.expect in line), "")
    errors = [i for i, line in enumerate(lines) if line.startswith("lit-rl: error:")]
    if errors:  # the error line and the indented lines under it
        first = errors[0]
        last = next((i for i in range(first + 1, len(lines)) if not lines[i][0].isspace()), None)
        return " ".join(line.strip() for line in lines[first:last])
    return lines[-1] if lines else ""


def table(outcomes: list[tuple[BadInput, Outcome]]) -> str:
    rows = [
        "| Bad input | Added to the command | Exit | What the user reads |",
        "|---|---|---|---|",
    ]
    for case, outcome in outcomes:
        command = " ".join(f"`{a}`" for a in case.args)
        message = outcome.message.replace("|", "\\|")
        rows.append(f"| {case.what} | {command} | {outcome.status} | {message} |")
    return "\n".join(rows)


def rewrite_document(model_dir: Path, workdir: Path) -> None:
    outcomes = [(case, run(case, model_dir, workdir / str(i))) for i, case in enumerate(CASES)]
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n" + table(outcomes) + "\n" + text[end:])


if __name__ == "__main__":
    import tempfile

    from tests.conftest import build_tiny_model, build_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        model_dir = Path(folder) / "tiny-llama"
        tokenizer = build_tokenizer()
        build_tiny_model(
            len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id
        ).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        rewrite_document(model_dir, Path(folder) / "runs")
    print(f"wrote {DOC.relative_to(ROOT)}")
