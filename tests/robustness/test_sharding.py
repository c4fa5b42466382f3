"""Rank sharding is DistributedSampler's and lines up with the global batches of pattern 5."""
import numpy as np
import pytest

from data.dataset import batches, epoch_order
from utils.distributed import epoch_batches, local_slice
from utils.errors import UserError


@pytest.mark.parametrize("n,batch_size,buffer_size,world", [
    (50, 8, 10000, 2), (51, 8, 10000, 2), (53, 12, 10000, 3), (40, 8, 7, 2), (33, 4, 5, 4), (17, 6, 10000, 1)])
def test_sampler_shards_are_strided_global_batches(n, batch_size, buffer_size, world):
    for epoch in range(3):
        order = epoch_order(n, buffer_size, seed=7, epoch=epoch)
        glob = list(batches(order, batch_size))
        per_rank = [list(epoch_batches(n, batch_size, buffer_size, 7, epoch, rank_=r, world=world))
                    for r in range(world)]
        seen = []
        for r, steps in enumerate(per_rank):
            assert len(steps) == len([b for b in glob if len(b) >= world]) or world == 1
            for (gsize, local), g in zip(steps, glob):
                assert gsize == len(g) - len(g) % world
                np.testing.assert_array_equal(local, g[local_slice(len(g), r, world)])
                seen.extend(local.tolist())
        # every rank the same number of trials; only n % world trials of the epoch's tail left out
        assert len({sum(len(l) for _, l in s) for s in per_rank}) == 1
        assert len(seen) == len(set(seen)) == n - n % world


def test_single_process_is_the_plain_epoch_order():
    steps = list(epoch_batches(23, 5, 10000, 3, 2))
    np.testing.assert_array_equal(np.concatenate([l for _, l in steps]), epoch_order(23, 10000, 3, 2))
    assert [g for g, _ in steps] == [5, 5, 5, 5, 3]


def test_batch_not_divisible_by_world_is_an_error():
    with pytest.raises(UserError, match="batch_size"):
        list(epoch_batches(20, 5, 100, 0, 0, rank_=0, world=2))
