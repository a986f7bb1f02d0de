"""Telling a user's mistake (one line) from a bug (a traceback), and digesting jsonargparse's
nested report to the key path and what is wrong."""

import pytest
import torch

from lit_rl.cli import digest
from lit_rl.data import PromptDataModule
from lit_rl.errors import is_input_error


def _raised(action) -> BaseException:
    with pytest.raises(BaseException) as info:
        action()
    return info.value


def test_lit_rls_own_refusals_are_input_errors_and_other_errors_are_not(tiny_model_dir):
    refusal = _raised(lambda: PromptDataModule(tokenizer=str(tiny_model_dir), batch_size=0))
    assert isinstance(refusal, ValueError) and is_input_error(refusal)
    # A ValueError torch raises (a bug, or an input lit_rl should have checked) keeps its trace.
    foreign = _raised(lambda: torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=-1))
    assert isinstance(foreign, ValueError) and not is_input_error(foreign)
    assert not is_input_error(_raised(lambda: [][1]))  # IndexError: a bug
    assert is_input_error(_raised(lambda: open("/no/such/file")))  # names its file


def test_a_nested_report_becomes_the_key_path_and_the_problem():
    report = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'lightning.pytorch.core.module.LightningModule'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'lit_rl.modules.GRPOModule':
        Parser key "num_generations":
          Expected a <class 'int'>. Got value: abc
    - Expected a <class 'NoneType'>
  Given value type: <class 'jsonargparse._util.NestedArg'>
  Given value: NestedArg(key='num_generations', val='abc')"""
    assert digest(report) == (
        "model (lit_rl.modules.GRPOModule) > num_generations: Expected a <class 'int'>. "
        "Got value: abc"
    )
    assert digest("unrecognized arguments: --trainer.bogus=3") == (
        "unrecognized arguments: --trainer.bogus=3"
    )
