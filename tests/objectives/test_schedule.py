"""Schedules: the published settings (the config's defaults), strict `epoch > start` boundaries, 1-based epochs."""

import dataclasses
from functools import partial

import pytest

from reid_accel.config import ObjectiveConfig, OptimConfig
from reid_accel.methods.cail import target_loss_schedule
from reid_accel.objectives import learning_rate_factor, memory_momentum, mixup_active

_O, _P = ObjectiveConfig(), OptimConfig()


def weights(epoch: int, *, camera_aware: bool, **changes) -> dict[str, float]:
    """The published schedule's weights in `epoch`, with `changes` to its values."""
    return dataclasses.replace(target_loss_schedule(_O), **changes).weights(epoch, camera_aware=camera_aware)


momentum = partial(memory_momentum, momentum=_O.memory_momentum)
mixup = partial(mixup_active, enabled=True, start_epoch=_O.mixup_start_epoch)
lr_factor = partial(learning_rate_factor, milestones=_P.milestones, gamma=_P.gamma)


def test_camera_aware_weights_switch_on_after_their_start_epochs():
    assert weights(1, camera_aware=True) == {"intra": 0.0, "inter": 0.0}
    assert weights(10, camera_aware=True) == {"intra": 0.0, "inter": 0.0}
    assert weights(11, camera_aware=True) == {"intra": 1.0, "inter": 0.0}
    assert weights(30, camera_aware=True) == {"intra": 1.0, "inter": 0.0}
    assert weights(31, camera_aware=True) == {"intra": 1.0, "inter": 0.5}
    assert weights(3, camera_aware=True, intra_start_epoch=2, intra_weight=2.0, inter_start_epoch=2) == {
        "intra": 2.0,
        "inter": 0.5,
    }


def test_camera_agnostic_weight():
    assert weights(10, camera_aware=False) == {"agnostic": 0.0}
    assert weights(11, camera_aware=False) == {"agnostic": 0.1}


def test_memory_momentum_is_zero_in_the_first_epoch():
    assert momentum(1) == 0.0
    assert momentum(2) == 0.6
    assert momentum(70, momentum=0.2) == 0.2


def test_mixup_from_the_second_epoch():
    assert not mixup(1)
    assert mixup(2)
    assert not mixup(2, enabled=False)
    assert not mixup(5, start_epoch=5) and mixup(6, start_epoch=5)


def test_learning_rate_steps_after_each_milestone():
    assert [lr_factor(e) for e in (1, 60, 61, 70)] == [1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1)]
    assert lr_factor(45, milestones=[20, 40], gamma=0.5) == 0.25


def test_linear_warm_up_as_the_clustering_recipes_run_it():
    """O2CAP: factor 0.01 + 0.99 e / 10 for 0-based epochs e < 10, then x0.1 after epochs 20 and 40."""
    o2cap = partial(learning_rate_factor, milestones=[20, 40], gamma=0.1, warmup_epochs=10, warmup_factor=0.01)
    assert o2cap(1) == pytest.approx(0.01)
    assert [o2cap(e) for e in range(1, 11)] == pytest.approx([0.01 + 0.99 * e / 10 for e in range(10)])
    assert [o2cap(e) for e in (11, 20, 21, 40, 41, 50)] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_epochs_are_one_based():
    for fn in (momentum, mixup, lr_factor):
        with pytest.raises(ValueError, match="1-based"):
            fn(0)
