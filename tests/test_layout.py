import pytest
import torch

from reid_accel.errors import ConfigError
from reid_accel.layout import BatchLayout, fitting_process_counts


def test_one_group_per_process_by_default():
    layout = BatchLayout.plan(256, 2)
    assert (layout.per_process, layout.bn_batch_size, layout.micro_batches, layout.sync_group_size) == (128, 128, 1, 1)
    assert layout.domain_share == 64 and layout.num_groups == 2


def test_micro_batches_take_the_positions_of_the_processes_they_replace():
    single = BatchLayout.plan(8, 1, bn_batch_size=4)
    assert (single.micro_batches, single.micro_batch, single.domain_share) == (2, 4, 2)
    # source positions 0-3, target positions 4-7; each micro-batch is [2 source | 2 target]
    assert single.positions(0).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    double = BatchLayout.plan(8, 2, bn_batch_size=4)
    assert torch.cat([double.positions(0), double.positions(1)]).tolist() == single.positions(0).tolist()
    assert [single.group_index(0, j) for j in range(2)] == [0, 1]
    assert [double.group_index(r, 0) for r in range(2)] == [0, 1]


def test_groups_larger_than_a_process_span_consecutive_ranks():
    layout = BatchLayout.plan(8, 4, bn_batch_size=4)
    assert (layout.micro_batches, layout.sync_group_size, layout.micro_batch) == (1, 2, 2)
    assert layout.sync_groups() == [[0, 1], [2, 3]]
    assert [layout.group_index(r, 0) for r in range(4)] == [0, 0, 1, 1]
    assert BatchLayout.plan(8, 2, bn_batch_size=4).sync_groups() == []


def test_source_only_layout():
    layout = BatchLayout.plan(12, 1, bn_batch_size=4, two_domains=False)
    assert (layout.micro_batches, layout.domain_share, layout.domain_batch) == (3, 4, 12)
    assert layout.positions(0).tolist() == list(range(12))
    assert layout.record()["micro_batch_target"] == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((34, 2), {}, r"data.batch_size=34 does not split over 2 processes in equal source and target halves; "),
        ((64, 2), {"bn_batch_size": 24}, r"data.bn_batch_size=24 does not split data.batch_size=64 into groups"),
        ((96, 4), {"bn_batch_size": 32}, r"4 processes x 24 images .* neither hold whole BatchNorm groups"),
        ((256, 4), {"bn_batch_size": 128, "sync_bn": False}, r"needs SyncBatchNorm over 2 processes of 64 images"),
    ],
)
def test_layouts_that_cannot_run_are_refused_with_advice(args, kwargs, message):
    with pytest.raises(ConfigError, match=message) as refused:
        BatchLayout.plan(*args, **kwargs)
    assert "launch" in str(refused.value) or "set data.batch_size to a multiple of" in str(refused.value)


def test_advice_lists_process_counts_that_run_the_recipe():
    with pytest.raises(ConfigError, match=r"launch 1 or 2 process\(es\) for this recipe"):
        BatchLayout.plan(256, 4, bn_batch_size=128, sync_bn=False)
    assert fitting_process_counts(256, 128, two_domains=True, sync_bn=False) == [1, 2]
    assert fitting_process_counts(256, 128, two_domains=True, sync_bn=True, limit=8) == [1, 2, 4, 8]
    assert fitting_process_counts(96, 32, two_domains=True, sync_bn=True, limit=8) == [1, 3, 6]


def test_describe_and_record():
    layout = BatchLayout.plan(256, 1, bn_batch_size=128)
    line = layout.describe(50)
    assert line == (
        "batch: 256 images per step = 1 processes x 2 micro-batch(es) of (64 source + 64 target); "
        "each BatchNorm sees 128; 50 steps/epoch"
    )
    assert layout.record()["micro_batches"] == 2 and layout.record()["bn_batch_size"] == 128
