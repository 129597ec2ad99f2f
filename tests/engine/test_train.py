import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reid_accel.cli import main
from reid_accel.config import load_config
from reid_accel.data import load_benchmark
from reid_accel.engine import train as train_module
from reid_accel.engine.state import load_encoder
from reid_accel.engine.train import LossNotFinite, TrainingInterrupted, setup, train, train_step
from reid_accel.errors import ModelLoadError
from reid_accel.folders import RunFolder
from reid_accel.generators.synthetic import generate_world


def _weights(run_dir):
    return load_file(RunFolder(run_dir).checkpoints()[-1].weights)


def _memory(run_dir):
    return load_file(RunFolder(run_dir).checkpoints()[-1].memory)["features"]


def test_two_epochs_end_to_end(straight_run):
    run = straight_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["evaluations"]] == [1, 2]
    for evaluation in metrics["evaluations"]:
        assert 0.0 <= evaluation["mAP"] <= 1.0 and 0.0 <= evaluation["rank1"] <= evaluation["rank5"] <= 1.0
        assert evaluation["num_valid_queries"] == 20 and evaluation["ap_mode"] == "standard"
    assert metrics["run"]["world_size"] == 1 and metrics["run"]["micro_batch_target"] == 16
    assert torch.__version__.startswith(metrics["run"]["packages"]["torch"])
    assert metrics["config"]["model"]["backbone"] == "test_resnet"
    assert sorted(p.name for p in (run / "model").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((run / "model" / "config.json").read_text())["pretrained"] is False
    card = (run / "model" / "README.md").read_text()  # written once, with the results, by train() itself
    last = metrics["evaluations"][-1]
    assert f"| 2 | {100 * last['mAP']:.1f} | {100 * last['rank1']:.1f} |" in card
    assert "reid-accel synthetic world" in card and "backbone: test_resnet" in card
    assert len(RunFolder(run).checkpoints()) == 2
    memory = _memory(run)
    assert torch.allclose(memory.norm(dim=1), torch.ones(len(memory)), atol=1e-5), "every slot written in epoch 1"
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and {"intra", "inter", "total"} <= set(history[1])
    assert 0 <= history[1]["neighbours/intra_precision"] <= 1 and history[1]["neighbours/inter_neighbours"] >= 0
    assert (run / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epoch 2" in (run / "train.log").read_text()


def test_the_model_folder_the_run_folder_and_the_last_checkpoint_load_the_same_encoder(straight_run):
    run = RunFolder(straight_run)
    images = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_encoder(run.model.root).embed(images)
        for reference in (run.root, run.checkpoints()[-1].root):
            torch.testing.assert_close(load_encoder(reference).embed(images), expected, rtol=0, atol=0)


def test_a_checkpoint_whose_config_names_another_backbone_is_refused(straight_run, tmp_path):
    copy = tmp_path / "checkpoint_1"
    shutil.copytree(RunFolder(straight_run).checkpoints()[-1].root, copy)
    encoder = copy / "encoder.json"
    encoder.write_text(encoder.read_text().replace('"test_resnet"', '"test_efficientnet"'))
    with pytest.raises(ModelLoadError, match=r"encoder.json: feature_dim 96 does not match test_efficientnet"):
        load_encoder(copy)
    encoder.write_text("{")
    with pytest.raises(ModelLoadError, match=r"checkpoint_1: not a readable checkpoint"):
        load_encoder(copy)
    encoder.unlink()  # as checkpoints written before the encoder's arguments were stored: rebuilt from the config
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("backbone: test_resnet", "backbone: test_efficientnet"))
    with pytest.raises(ModelLoadError, match=r"checkpoint_1: checkpoint does not match test_efficientnet: missing"):
        load_encoder(copy)
    config.write_text("model: [")
    with pytest.raises(ModelLoadError, match=r"checkpoint_1: not a readable checkpoint"):
        load_encoder(copy)


def test_resume_after_an_epoch_matches_one_run(write_config, tmp_path, straight_run):
    split = f"train.output_dir={tmp_path / 'split'}"
    train(load_config(write_config(), [split, "train.max_steps=6"]))
    train(load_config(write_config(), [split, "train.resume=auto"]))
    expected, resumed = _weights(straight_run), _weights(tmp_path / "split")
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    assert torch.equal(_memory(straight_run), _memory(tmp_path / "split"))


def test_resume_removes_a_checkpoint_the_run_died_while_saving(write_config, tmp_path, straight_run):
    crashed = f"train.output_dir={tmp_path / 'crashed'}"
    train(load_config(write_config(), [crashed, "train.max_steps=6"]))
    (complete,) = RunFolder(tmp_path / "crashed").checkpoints()
    broken = type(complete)(complete.root.parent / "checkpoint_1")
    shutil.copytree(complete.root, broken.root)
    broken.state.unlink()  # accelerate's folder was written, the run died before reid-accel's state
    train(load_config(write_config(), [crashed, "train.resume=auto"]))
    assert [c.root.name for c in RunFolder(tmp_path / "crashed").checkpoints()] == ["checkpoint_0", "checkpoint_1"]
    assert json.loads(broken.state.read_text())["epoch"] == 3, "saved anew under the removed one's number"
    expected, resumed = _weights(straight_run), _weights(tmp_path / "crashed")
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key


def test_micro_batches_accumulate_and_only_the_first_updates_batchnorm_statistics(write_config):
    run = setup(load_config(write_config(), ["data.batch_size=32", "data.bn_batch_size=8"]))
    assert run.layout.micro_batches == 4
    norms = [m for m in run.network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    run.sampler.set_epoch(1)
    for step, batch in zip(range(2), run.train_loader, strict=False):
        components = train_step(run, batch, epoch=1, step=step)
    assert {int(m.num_batches_tracked) for m in norms} == {2}, "one running-statistics update per step"
    assert components["total"].ndim == 0 and torch.isfinite(components["total"])
    assert all(p.grad is None for p in run.network.parameters()), "gradients are cleared after the step"


def test_a_diverging_loss_names_itself_at_the_next_log(write_config):
    config = write_config(optim={"lr_backbone": 1e30, "lr_new": 1e30}, train={"log_interval": 2})
    with pytest.raises(LossNotFinite, match=r"non-finite loss .*total.* before global step \d+"):
        train(load_config(config))


def test_sigterm_mid_epoch_saves_and_resumes_exactly(write_config, tmp_path, monkeypatch, straight_run):
    step = train_module.train_step
    calls = []

    def step_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(*args, **kwargs)

    interrupted = f"train.output_dir={tmp_path / 'interrupted'}"
    monkeypatch.setattr(train_module, "train_step", step_then_signal)
    with pytest.raises(TrainingInterrupted) as stop:
        train(load_config(write_config(), [interrupted]))
    assert stop.value.signum == signal.SIGTERM
    saved = json.loads(RunFolder(tmp_path / "interrupted").checkpoints()[-1].state.read_text())
    assert saved == {"epoch": 1, "step_in_epoch": 3, "global_step": 3}
    monkeypatch.setattr(train_module, "train_step", step)
    train(load_config(write_config(), [interrupted, "train.resume=auto"]))
    expected, resumed = _weights(straight_run), _weights(tmp_path / "interrupted")
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key


def test_cli_reports_sigterm_with_the_resume_command(write_config, tmp_path, monkeypatch, capsys):
    def signal_now(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return step(*args, **kwargs)

    step = train_module.train_step
    monkeypatch.setattr(train_module, "train_step", signal_now)
    assert main(["train", str(write_config())]) == 128 + signal.SIGTERM
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"data": {"source": {"name": "imagenet", "root": "x"}}}, "imagenet"),
        ({"data": {"target": {"name": "market1501", "root": "/nonexistent/market"}}}, "/nonexistent/market"),
        ({"optim": {"epoch": 3}}, "optim.epoch: unknown key"),
        ({"train": {"mixed_precision": "fp16"}}, "fp16 needs a GPU"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(write_config, capsys, sections, message):
    if message == "fp16 needs a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so fp16 is valid")
    assert main(["train", str(write_config(**sections))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_refuses_to_overwrite_a_run_without_resume(write_config, tmp_path, capsys):
    config = write_config(optim={"epochs": 1, "milestones": [1]})
    assert main(["train", str(config)]) == 0
    assert main(["train", str(config)]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def test_source_only_baseline_trains_without_a_target(write_config, tmp_path):
    config = write_config(data={"target": None}, objective={"target_branch": False, "mixup": False})
    result = train(load_config(config, ["optim.epochs=1", "optim.milestones=[1]"]))
    assert len(result.evaluations) == 1
    assert not RunFolder(tmp_path / "run").checkpoints()[-1].memory.exists()


def test_saved_datasets_train_and_evaluate_without_their_image_folders(write_config, tmp_path):
    domains = {}
    for domain in "ab":
        world = generate_world(tmp_path / f"world_{domain}", domain=domain, seed=1, num_ids=6)
        load_benchmark("synthetic", world, cache_dir=tmp_path / "cache").save_to_disk(tmp_path / f"saved_{domain}")
        shutil.rmtree(world)
        domains[domain] = {"name": "saved", "root": str(tmp_path / f"saved_{domain}")}
    config = write_config(
        data={"source": domains["a"], "target": domains["b"]}, optim={"epochs": 1, "milestones": [1]}
    )
    assert main(["train", str(config), "train.max_steps=2", "data.preload=true"]) == 0
    (evaluation,) = json.loads((tmp_path / "run" / "metrics.json").read_text())["evaluations"]
    assert 0 < evaluation["mAP"] <= 1 and evaluation["num_valid_queries"] > 0


def test_overrides_may_follow_options(write_config, tmp_path):
    config = write_config(optim={"epochs": 1, "milestones": [1]})
    assert main(["train", str(config), "--output-dir", str(tmp_path / "other"), "train.eval_interval=5"]) == 0
    assert json.loads((tmp_path / "other" / "metrics.json").read_text())["config"]["train"]["eval_interval"] == 5


def test_cli_refuses_bad_counts_and_unreadable_paths_in_one_line(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "w"), "--domain", "a", "--ids", "0"]) == 2
    assert "--ids: expected a whole number >= 2, got 0" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["data", "synth", str(blocker / "world"), "--domain", "a"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reid-accel: error: ") and str(blocker) in err[0], err


def test_init_from_starts_from_a_saved_model_strictly(write_config, tmp_path):
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "model-0.1.0"
    run = setup(load_config(write_config(), [f"model.init_from={fixture}"]))
    saved = load_file(fixture / "model.safetensors")
    assert run.encoder.backbone_name == "test_efficientnet"
    assert all(torch.equal(saved[k], v) for k, v in run.encoder.state_dict().items())
    assert run.encoder.training, "the loaded model trains (BatchNorm in training mode)"
    (tmp_path / "not-a-model").mkdir()
    assert main(["train", str(write_config()), f"model.init_from={tmp_path / 'not-a-model'}"]) == 2


def test_a_checkpoint_of_a_run_started_from_a_saved_model_rebuilds_that_model(write_config, tmp_path):
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "model-0.1.0"  # test_efficientnet
    config = load_config(
        write_config(), [f"model.init_from={fixture}", "train.max_steps=1"]
    )  # model.backbone: test_resnet
    train(config)
    run = RunFolder(tmp_path / "run")
    from_checkpoint, exported = load_encoder(run.checkpoints()[-1].root), load_encoder(run.model.root)
    assert from_checkpoint.backbone_name == exported.backbone_name == "test_efficientnet"
    images = torch.randn(2, 3, *exported.input_size)
    assert torch.equal(from_checkpoint.embed(images), exported.embed(images))
