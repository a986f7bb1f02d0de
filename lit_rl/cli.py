"""``lit-rl``: LightningCLI over lit_rl's modules and data (``lit-rl fit --config
recipes/x.yaml``, ``validate``), and the commands on a trained policy (``generate``,
``export``: ``lit_rl.commands``).

A user's mistake gets one short message naming the value and the fix, not a parser dump or a
traceback: configuration errors are digested from jsonargparse's nested report, and the
errors lit_rl raises on purpose for bad input (``raise ValueError(...)`` and its kin in
lit_rl's own code) print their sentence alone. Anything else (a bug) keeps its traceback, as
does every error when ``LIT_RL_TRACEBACK=1``.
"""

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_rl.callbacks import StepProgressBar
from lit_rl.commands import COMMANDS
from lit_rl.console import quiet_console
from lit_rl.errors import INPUT_ERRORS, is_input_error
from lit_rl.strategies import check_checkpoint_file

EXIT_USAGE = 2  # argparse's status for a command line it refuses
TRACEBACK_VARIABLE = "LIT_RL_TRACEBACK"

# Lines of jsonargparse's report that describe its own machinery, not the user's value.
_NOISE = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes: |Errors:|"
    r"Given value type: |Given value: |- Expected a <class 'NoneType'>)"
)
_KEY = re.compile(r'^(?:- )?Parser key "([^"]+)":$')
_CLASS = re.compile(r"^- Problem with given class_path '([^']+)':$")


def digest(report: str) -> str:
    """jsonargparse's nested error report as one line: the path of keys to the bad value,
    then what is wrong with it."""
    path, details = [], []
    for line in (raw.strip() for raw in report.splitlines()):
        if not line or _NOISE.match(line):
            continue
        if key := _KEY.match(line):
            path.append(key.group(1))
        elif cls := _CLASS.match(line):
            path.append(f"({cls.group(1)})")
        else:
            # "Type <the whole annotation> expects ..." -> "expects ..."
            details.append(re.sub(r"^Type .+? expects ", "expects ", line.removeprefix("- ")))
    where = " ".join(path).replace(") ", ") > ")
    return f"{where}: {'; '.join(details)}" if where else "; ".join(details)


class LitRLArgumentParser(LightningArgumentParser):
    """Prints a digest of a refused command line or configuration instead of the usage
    and jsonargparse's full report."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get(TRACEBACK_VARIABLE):
            super().error(message, ex)
        words = self.prog.split()  # "lit-rl [options] fit" for a subcommand's parser
        command = f"lit-rl {words[-1]}" if len(words) > 1 else "lit-rl"
        fail(f"{digest(message)}\n  ('{command} --help' lists the options)")


# Lightning's own subcommands that mean something for an RL module (its test and predict
# would call steps the modules do not have), each with its line for `lit-rl --help`.
LIGHTNING_COMMANDS = {
    "fit": "train a policy with a recipe: lit-rl fit --config recipes/grpo_math.yaml",
    "validate": "evaluate a policy on a recipe's held-out problems (greedy, pass@k, maj@k)",
}


def usage() -> str:
    lines = [(name, text) for name, text in LIGHTNING_COMMANDS.items()]
    lines += [(name, command.HELP) for name, command in COMMANDS.items()]
    listed = "\n".join(f"  {name:<9} {text}" for name, text in lines)
    return (
        f"usage: lit-rl <command> [options]\n\ncommands:\n{listed}\n\n"
        "'lit-rl <command> --help' lists a command's options."
    )


class LitRLCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        every = LightningCLI.subcommands()
        return {name: every[name] for name in LIGHTNING_COMMANDS}

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        # The data module tokenizes with the model's tokenizer and chat template.
        parser.link_arguments("model.init_args.model", "data.init_args.tokenizer")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:  # noqa: ANN401 (LightningCLI's)
        """The Trainer, with ``StepProgressBar`` in place of the bar Lightning adds by default
        (a recipe that names a progress bar keeps it)."""
        # Read before the Trainer, which appends its defaults to this same list.
        settings = self.config_init[self.subcommand] if self.subcommand else self.config_init
        configured = settings.trainer.get("callbacks") or []  # (no subcommand: run=False)
        named_a_bar = any(isinstance(c, ProgressBar) for c in configured)
        trainer = super().instantiate_trainer(**kwargs)
        if not named_a_bar:
            trainer.callbacks = [
                StepProgressBar() if type(c) in (RichProgressBar, TQDMProgressBar) else c
                for c in trainer.callbacks
            ]
        return trainer

    def before_instantiate_classes(self) -> None:
        # `--ckpt_path last` must find the run it continues: a logger with its own save_dir
        # and no version (the recipes' TensorBoardLogger) would start a new version_N folder,
        # and the checkpoints live in the run's folder. Continue the newest one that has a
        # last.ckpt instead (logs and checkpoints carry on there).
        config = self._subcommand_config()
        if self.config.get("subcommand") != "fit" or config.get("ckpt_path") != "last":
            return
        logger = config.trainer.get("logger")
        settings = logger.get("init_args") if isinstance(logger, Namespace) else None
        if settings is None or settings.get("version") is not None or not settings.get("save_dir"):
            return
        run_folder = Path(settings.save_dir) / (settings.get("name") or "")
        version = newest_version_with_last(run_folder)
        if version is not None:
            settings.version = version
            print(
                f"lit-rl: --ckpt_path last continues {run_folder / version}",
                file=sys.stderr,
            )

    def parse_arguments(self, parser, args) -> None:  # noqa: ANN001 (LightningCLI's)
        super().parse_arguments(parser, args)
        # LightningCLI reads a checkpoint's hyperparameters right after parsing, with a bare
        # torch error for a file that is not a whole checkpoint: name the file first.
        ckpt_path = self._subcommand_config().get("ckpt_path")
        if ckpt_path:
            check_checkpoint_file(Path(ckpt_path))

    def _subcommand_config(self) -> Namespace:
        """The parsed settings of the subcommand being run (fit, validate, ...)."""
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else Namespace()


def run_cli(args: list[str] | None = None) -> LitRLCLI:
    """Parse ``args`` (default: the command line), run the subcommand, return the CLI object."""
    return LitRLCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_class=LitRLArgumentParser,
        args=args,
    )


def run_command(name: str, args: list[str]) -> None:
    """One of ``lit_rl.commands`` with its own arguments."""
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"lit-rl {name}", description=command.HELP)
    command.add_arguments(parser)
    command.run(parser.parse_intermixed_args(args))  # prompts may follow the options


def newest_version_with_last(run_folder: Path) -> str | None:
    """The ``version_N`` folder under ``run_folder`` whose ``checkpoints/last.ckpt`` was
    written last, if any."""
    candidates = list(run_folder.glob("version_*/checkpoints/last.ckpt"))
    if not candidates:
        return None
    return max(candidates, key=lambda path: path.stat().st_mtime).parents[1].name


def fail(message: str) -> NoReturn:
    print(f"lit-rl: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def input_error_message(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return digest(text) if "Union subtypes" in text else text


def main(args: list[str] | None = None) -> None:
    """The ``lit-rl`` console script: exit status 0 on success, 2 for bad input (one line
    on stderr), 128 + signal for a run stopped by SIGTERM/SIGINT after its checkpoint."""
    # As `python -m` does: a reward or data module in the working folder imports by class_path
    # (a console script's path holds only its own folder).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    quiet_console()
    words = sys.argv[1:] if args is None else args
    if not words or words[0] in ("-h", "--help"):
        print(usage())
        return
    known = [*LIGHTNING_COMMANDS, *COMMANDS]
    if not words[0].startswith("-") and words[0] not in known:
        fail(f"unknown command '{words[0]}': one of {', '.join(known)} ('lit-rl --help')")
    try:
        if words[0] in COMMANDS:
            run_command(words[0], words[1:])
        else:
            run_cli(args)  # None: LightningCLI reads sys.argv itself
    except INPUT_ERRORS as error:
        if os.environ.get(TRACEBACK_VARIABLE) or not is_input_error(error):
            raise
        fail(f"{input_error_message(error)}\n  ({TRACEBACK_VARIABLE}=1 shows the traceback)")


if __name__ == "__main__":
    main()
