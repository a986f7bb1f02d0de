"""docs/environments.md's recipe block builds a module whose episodes make fresh instances of
the page's environment (its first Python block, ``my_environments.py``, imported the way a
recipe's class_path finds it). tests/test_docs.py runs the page's code blocks."""

import re
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).parents[1] / "docs" / "environments.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.DOTALL)


@pytest.fixture
def my_environments(tmp_path, monkeypatch):
    first = blocks("python")[0]
    assert first.startswith("# my_environments.py")
    (tmp_path / "my_environments.py").write_text(first)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield __import__("my_environments")
    sys.modules.pop("my_environments", None)


def test_the_recipe_block_builds_episodes_of_that_environment(
    my_environments, tiny_model_dir, tmp_path
):
    from lit_rl.cli import LitRLCLI

    recipe = blocks("yaml")[0]  # the page's first: the episodes of my_environments
    assert "my_environments.GuessTheNumber" in recipe
    recipe = recipe.replace("  init_args:\n", f"  init_args:\n    model: {tiny_model_dir}\n", 1)
    config = tmp_path / "recipe.yaml"
    config.write_text(recipe + "data:\n  class_path: lit_rl.data.PromptDataModule\n")
    cli = LitRLCLI(args=["--config", str(config)], run=False)
    episodes = cli.model.episodes
    first, second = episodes.environment(), episodes.environment()
    assert isinstance(first, my_environments.GuessTheNumber) and first is not second
    assert (first.low, first.high, episodes.max_turns) == (1, 100, 6)
