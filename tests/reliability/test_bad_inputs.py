"""Every bad input in tests/reliability/bad_inputs.py, run through the lit-rl CLI, gets its one
clear message (no parser dump, no traceback unless the user's own code failed), and
docs/reliability.md shows exactly these messages (``make reliability`` rewrites it)."""

import pytest

from tests.reliability.bad_inputs import BEGIN, CASES, DOC, END, run, table


@pytest.fixture(scope="module")
def outcomes(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    return [(case, run(case, tiny_model_dir, root / str(i))) for i, case in enumerate(CASES)]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case.what for case in CASES])
def test_the_bad_input_gets_one_clear_message(outcomes, index):
    case, outcome = outcomes[index]
    assert outcome.status == case.status, outcome.stderr[-2000:]
    assert case.expect in outcome.message, outcome.stderr[-2000:]
    if case.status == 2:  # refused input: the sentence alone
        assert outcome.message.startswith("lit-rl: error:")
        assert "Traceback" not in outcome.stderr
        assert len(outcome.message) < 400, outcome.message
    if case.status == 1:  # the user's reward failed: its traceback, then what it was doing
        assert "Traceback" in outcome.stderr


def test_the_document_shows_these_messages(outcomes):
    text = DOC.read_text()
    committed = text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()
    assert committed == table(outcomes), "docs/reliability.md is stale: run make reliability"
