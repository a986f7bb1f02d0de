"""ResumableSampler: each epoch's order is a function of seed + epoch, processes read
disjoint slices, and a sampler restored from a state mid-epoch hands out exactly the indices
the uninterrupted one would have, in this epoch and the next."""

import pytest

from lit_rl.data import ResumableDataLoader, ResumableSampler


def epochs(sampler: ResumableSampler, first: int, count: int) -> list[list[int]]:
    order = []
    for epoch in range(first, first + count):
        sampler.set_epoch(epoch)  # as Lightning does at every epoch start
        order.append(list(sampler))
    return order


def test_orders_are_permutations_that_change_with_the_epoch_and_seed():
    a, b = epochs(ResumableSampler(10, seed=1), 0, 2)
    assert sorted(a) == sorted(b) == list(range(10))
    assert a != b
    assert epochs(ResumableSampler(10, seed=1), 0, 1) == [a]
    assert epochs(ResumableSampler(10, seed=2), 0, 1) != [a]


def test_processes_read_disjoint_slices_of_one_order():
    slices = [epochs(ResumableSampler(8, seed=0, rank=r, num_replicas=2), 0, 1)[0] for r in (0, 1)]
    assert sorted(slices[0] + slices[1]) == list(range(8))
    assert len(slices[0]) == len(slices[1]) == 4


@pytest.mark.parametrize("used", [0, 3, 6])
def test_a_restored_sampler_continues_mid_epoch_and_into_the_next(used):
    reference = epochs(ResumableSampler(6, seed=5), 0, 3)
    sampler = ResumableSampler(6, seed=5)
    sampler.set_epoch(1)
    drawn = iter(sampler)
    seen = [next(drawn) for _ in range(used)]
    state = sampler.state_dict()
    assert state == {"epoch": 1, "consumed": used, "seed": 5}

    restored = ResumableSampler(6, seed=5)
    restored.load_state_dict(state)
    rest = epochs(restored, 1, 2)
    assert seen + rest[0] == reference[1]
    assert rest[1] == reference[2]


def test_another_data_seed_is_refused_naming_both():
    sampler = ResumableSampler(6, seed=5)
    with pytest.raises(ValueError, match="seed 5, this run's with 7"):
        ResumableSampler(6, seed=7).load_state_dict(sampler.state_dict())


def test_the_loader_counts_batches_as_they_are_used():
    loader = ResumableDataLoader(list(range(8)), ResumableSampler(8, seed=0), batch_size=2)
    batches = iter(loader)
    next(batches)
    next(batches)
    assert loader.state_dict()["consumed"] == 4  # no index fetched ahead
    with pytest.raises(ValueError, match="num_workers=0"):
        ResumableDataLoader([1, 2], ResumableSampler(2, seed=0), num_workers=2)


def test_a_position_saved_by_two_processes_resumes_in_one():
    two = [ResumableSampler(8, seed=0, rank=r, num_replicas=2) for r in (0, 1)]
    draws = [iter(sampler) for sampler in two]
    used = [next(d) for _ in range(2) for d in draws]  # two batches of one prompt per process
    state = two[0].state_dict()
    assert state["consumed"] == 4
    one = ResumableSampler(8, seed=0)
    one.load_state_dict(state)
    rest = list(one)
    assert sorted(used + rest) == list(range(8))  # every prompt once: none replayed or lost
