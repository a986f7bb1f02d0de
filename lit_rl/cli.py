"""``lit-rl``: LightningCLI over lit_rl's modules and data. ``lit-rl fit --config recipes/x.yaml``."""

import os
import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class LitRLCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        # The data module tokenizes with the model's tokenizer and chat template.
        parser.link_arguments("model.init_args.model", "data.init_args.tokenizer")


def run_cli(args: list[str] | None = None) -> LitRLCLI:
    """Parse ``args`` (default: the command line), run the subcommand, return the CLI object."""
    return LitRLCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main() -> None:
    """The ``lit-rl`` console script (returns nothing, so the exit status is 0 on success)."""
    # As `python -m` does: a reward or data module in the working folder imports by class_path
    # (a console script's path holds only its own folder).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    run_cli()


if __name__ == "__main__":
    main()
