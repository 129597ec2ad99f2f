"""A backbone that cannot do what the experiment asks stops `reid-accel train` in one line, before training."""

from reid_accel.cli import main


def test_a_vit_asked_for_last_stride_one_fails_in_one_line(write_config, tmp_path, capsys):
    config = write_config(model={"backbone": "test_vit", "pretrained": False, "last_stride": 1})
    assert main(["train", str(config)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "reid-accel: error: model.last_stride=1: timm's 'test_vit' cannot reduce its last stride (no output_stride=16); "
        "use model.last_stride=2 to keep its own stride"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()
