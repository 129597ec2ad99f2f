"""Schedules: published defaults, strict `epoch > start` boundaries, 1-based epochs."""

import pytest

from reid_accel.objectives import learning_rate_factor, memory_momentum, mixup_active, target_loss_weights


def test_camera_aware_weights_switch_on_after_their_start_epochs():
    assert target_loss_weights(1, neighbor_mode=1) == {"intra": 0.0, "inter": 0.0}
    assert target_loss_weights(10, neighbor_mode=1) == {"intra": 0.0, "inter": 0.0}
    assert target_loss_weights(11, neighbor_mode=1) == {"intra": 1.0, "inter": 0.0}
    assert target_loss_weights(30, neighbor_mode=1) == {"intra": 1.0, "inter": 0.0}
    assert target_loss_weights(31, neighbor_mode=1) == {"intra": 1.0, "inter": 0.5}
    assert target_loss_weights(3, neighbor_mode=1, intra_start_epoch=2, intra_weight=2.0, inter_start_epoch=2) == {
        "intra": 2.0,
        "inter": 0.5,
    }


def test_camera_agnostic_weight():
    assert target_loss_weights(10, neighbor_mode=0) == {"agnostic": 0.0}
    assert target_loss_weights(11, neighbor_mode=0) == {"agnostic": 0.1}
    with pytest.raises(ValueError, match="neighbor_mode"):
        target_loss_weights(11, neighbor_mode=2)


def test_memory_momentum_is_zero_in_the_first_epoch():
    assert memory_momentum(1) == 0.0
    assert memory_momentum(2) == 0.6
    assert memory_momentum(70, momentum=0.2) == 0.2


def test_mixup_from_the_second_epoch():
    assert not mixup_active(1, enabled=True)
    assert mixup_active(2, enabled=True)
    assert not mixup_active(2, enabled=False)
    assert not mixup_active(5, enabled=True, start_epoch=5) and mixup_active(6, enabled=True, start_epoch=5)


def test_learning_rate_steps_after_each_milestone():
    assert [learning_rate_factor(e) for e in (1, 60, 61, 70)] == [1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1)]
    assert learning_rate_factor(45, milestones=[20, 40], gamma=0.5) == 0.25


def test_epochs_are_one_based():
    for fn in (memory_momentum, lambda e: mixup_active(e, enabled=True), learning_rate_factor):
        with pytest.raises(ValueError, match="1-based"):
            fn(0)
