"""The conformance table (docs/algorithms/conformance.md): every row's library loss and gradient
agree with the naive loops, and the committed document is the one the code produces now."""

import pytest

from tests.algorithms import conformance

TABLE = conformance.rows()


@pytest.mark.parametrize(
    "row", TABLE, ids=lambda r: f"{r.estimator}-{r.reward_kl}-{r.loss}-{r.loss_kl}"
)
def test_the_library_agrees_with_the_naive_loop(row):
    assert row.agrees, row


def test_rows_cover_every_loss_kl_and_estimator():
    assert {r.loss for r in TABLE} == set(conformance.LOSSES)
    assert {r.estimator for r in TABLE} == set(conformance.ESTIMATORS)
    assert {r.loss_kl for r in TABLE} == {None, "k1", "k2", "k3"}
    assert {r.reward_kl for r in TABLE} == {None, "k1", "k2", "k3"}
    # The batch exercises the clip and the KL: rows differ where the configuration does,
    # except bnpo and ppo, which on one micro-batch are dapo's token mean of the same terms.
    distinct = {round(r.library_loss, 9) for r in TABLE if r.loss not in ("bnpo", "ppo")}
    assert len(distinct) == len([r for r in TABLE if r.loss not in ("bnpo", "ppo")])
    by_config = {(r.estimator, r.reward_kl, r.loss, r.loss_kl): r.library_loss for r in TABLE}
    for (estimator, reward_kl, loss, loss_kl), value in by_config.items():
        if loss in ("bnpo", "ppo"):
            assert value == by_config[(estimator, reward_kl, "dapo", loss_kl)]


def test_the_document_is_the_table_the_code_produces():
    expected = conformance.markdown(TABLE)
    assert conformance.DOC.read_text() == expected, (
        "docs/algorithms/conformance.md is stale: a loss or estimator changed its value. "
        "If the change is intended, run `make conformance` and commit the document."
    )
