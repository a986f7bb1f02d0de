"""What the ``lit-rl`` console shows: lit_rl's own lines, Lightning's summary and progress bar,
and none of the third-party notices that say nothing about the run (each named below with
why it is noise). Applied by the console script only; a library user's own filters stand."""

import logging
import warnings

import datasets
from transformers.utils import logging as transformers_logging

# (message pattern, category): warnings raised on every run that the user cannot act on.
IGNORED_WARNINGS = [
    # peft warns about its own default LoraConfig field whenever a config is built.
    (r"`loftq_config` specified but will be ignored", UserWarning),
    # transformers 5 renamed the flag; peft still reads the old name.
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
    # Lightning's pytree helper on torch >= 2.11; nothing in lit_rl or the user's code.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", Warning),
    # lit_rl keeps every network in eval mode on purpose (no dropout in pi, pi_old, pi_ref).
    (r"Found \d+ module\(s\) in eval mode at the start of training", Warning),
    # A run without a validation split returns no validation loader (an empty list).
    (r"Total length of `list` across ranks is zero", Warning),
]

# Lightning log lines: an advertisement, and a default it announces at every checkpoint.
IGNORED_LOG_PREFIXES = ("💡 Tip: For seamless cloud logging", "`weights_only` was not set")


class _DropPrefixes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(IGNORED_LOG_PREFIXES)


def quiet_console() -> None:
    """Install the filters above and turn off transformers' and datasets' progress bars."""
    for pattern, category in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
    ):
        logging.getLogger(name).addFilter(_DropPrefixes())
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()  # "Generating train split" for every local data file
