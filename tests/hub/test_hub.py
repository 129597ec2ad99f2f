import json
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from reid_accel import hub
from reid_accel.cli import main
from reid_accel.errors import ModelLoadError
from reid_accel.modeling import ReIDEncoder
from reid_accel.modeling import encoder as encoder_module

METRICS = {
    "evaluations": [
        {"epoch": 1, "mAP": 0.1234, "rank1": 0.2, "rank5": 0.4, "rank10": 0.5, "num_valid_queries": 20},
        {"epoch": 2, "mAP": 0.4321, "rank1": 0.6, "rank5": 0.8, "rank10": 0.9, "num_valid_queries": 20},
    ],
    "run": {
        "global_batch": 256,
        "bn_batch_size": 128,
        "world_size": 2,
        "micro_batches": 1,
        "micro_batch_source": 64,
        "micro_batch_target": 64,
        "mixed_precision": "fp16",
    },
    "config": {"data": {"source": {"name": "dukemtmc"}, "target": {"name": "market1501"}, "eval": None}},
}


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    model = ReIDEncoder("test_resnet", input_size=[64, 32]).eval()
    with torch.no_grad():
        model.neck.running_mean.normal_()  # something a fresh model would not have
    return model


@pytest.fixture
def run_dir(tmp_path, encoder):
    run = tmp_path / "run"
    encoder.save_pretrained(run / "model")
    (run / "metrics.json").write_text(json.dumps(METRICS))
    return run


def test_save_then_load_gives_identical_features(encoder, tmp_path):
    encoder.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["pretrained"] is False and config["pretrained_path"] is None and config["feature_dim"] == 96
    loaded = ReIDEncoder.from_pretrained(tmp_path / "m")
    images = torch.randn(3, 3, 64, 32)
    assert torch.equal(encoder.embed(images), loaded.embed(images))
    assert loaded.input_size == (64, 32) and loaded.mean == encoder.mean


def test_save_pretrained_rewrites_a_stale_card(encoder, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "README.md").write_text("stale")
    encoder.save_pretrained(tmp_path / "m")
    assert "stale" not in (tmp_path / "m" / "README.md").read_text()


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda d: (d / "config.json").write_text("{not json"), "not a valid JSON config"),
        (lambda d: _edit_config(d, lambda c: c.update(depth=50)), "unknown key(s) depth"),
        (lambda d: _edit_config(d, lambda c: c.update(backbone="resnet18")), "does not match resnet18 (512)"),
        (lambda d: _drop_weight(d, "neck.weight"), "missing ['neck.weight']"),
        (lambda d: _edit_config(d, lambda c: c.update(feature_dim=2048)), "feature_dim 2048 does not match"),
        (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), "not a readable safetensors file"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors: missing"),
    ],
)
def test_corrupt_or_mismatched_folders_fail_clearly(encoder, tmp_path, corrupt, message):
    folder = tmp_path / "m"
    encoder.save_pretrained(folder)
    corrupt(folder)
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        ReIDEncoder.from_pretrained(folder)


def _drop_weight(folder, key):
    weights = load_file(folder / "model.safetensors")
    del weights[key]
    save_file(weights, folder / "model.safetensors")


def _edit_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_model_card_metadata_parses_and_carries_the_results(run_dir):
    card_path = hub.write_model_card(
        run_dir / "model", metrics_path=run_dir / "metrics.json", repo_id="me/duke2market"
    )
    card = ModelCard.load(card_path)
    data = card.data.to_dict()
    assert data["library_name"] == "reid-accel" and "person-reid" in data["tags"]
    assert data["datasets"] == ["dukemtmc", "market1501"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"map": 43.21, "rank1": 60.0, "rank5": 80.0, "rank10": 90.0}
    assert "| 2 | 43.2 | 60.0 | 80.0 | 90.0 |" in card.text
    assert 'ReIDEncoder.from_pretrained("me/duke2market")' in card.text and "@inproceedings{luo2020" in card.text
    assert yaml.safe_load(card.content.split("---")[1])["model-index"][0]["results"]
    assert "(standard AP, Market-1501 protocol)" in card.text  # entries without `ap_mode` predate it: standard


def test_model_card_names_the_ap_convention_of_the_evaluations(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for evaluation in metrics["evaluations"]:
        evaluation["ap_mode"] = "trapezoid"
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    card = ModelCard.load(hub.write_model_card(run_dir / "model", metrics_path=run_dir / "metrics.json"))
    assert "## Results on Market-1501 (trapezoid AP, Market-1501 protocol)" in card.text


@pytest.fixture
def fake_hub(monkeypatch):
    """Record repo creation and uploads instead of talking to the Hub; `files` maps each upload to its texts."""
    calls = {"repos": [], "uploads": []}
    monkeypatch.setattr(encoder_module, "hub_create_repo", lambda repo_id, **kw: calls["repos"].append((repo_id, kw)))

    def fake_upload(**kwargs):
        folder = Path(kwargs["folder_path"])
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        calls["uploads"].append({**kwargs, "files": files})
        return "https://huggingface.co/me/model/commit/abc"

    monkeypatch.setattr(encoder_module, "upload_folder", fake_upload)
    return calls


def test_push_sends_only_the_model_files(run_dir, fake_hub):
    (run_dir / "checkpoints").mkdir()
    assert main(["push", str(run_dir), "--repo-id", "me/model", "--private"]) == 0
    assert fake_hub["repos"] == [
        ("me/model", {"private": True, "exist_ok": True, "token": None, "repo_type": "model"})
    ]
    upload = fake_hub["uploads"][0]
    assert upload["folder_path"] == run_dir / "model"
    assert upload["allow_patterns"] == ["model.safetensors", "config.json", "README.md"]
    assert "43.2" in (run_dir / "model" / "README.md").read_text()


def test_every_path_writes_the_same_card(encoder, run_dir, tmp_path, fake_hub):
    """save_pretrained, push_to_hub and `reid-accel push` write one card: the reid-accel one, never the mixin's."""
    encoder.save_pretrained(tmp_path / "direct", repo_id="me/model")
    direct = (tmp_path / "direct" / "README.md").read_text()
    assert "More Information Needed" not in direct and "@inproceedings{luo2020" in direct
    assert "ecva.net/papers/eccv_2020/papers_ECCV/papers/123600222.pdf" in direct
    assert 'ReIDEncoder.from_pretrained("me/model")' in direct

    assert encoder.push_to_hub("me/model", private=True) == "https://huggingface.co/me/model/commit/abc"
    pushed = fake_hub["uploads"][0]
    assert sorted(pushed["files"]) == ["README.md", "config.json", "model.safetensors"]
    assert pushed["files"]["README.md"].decode() == direct
    assert fake_hub["repos"][0] == (
        "me/model",
        {"private": True, "exist_ok": True, "token": None, "repo_type": "model"},
    )

    (run_dir / "metrics.json").unlink()  # without a run's metrics the command's card is the same card
    assert main(["push", str(run_dir), "--repo-id", "me/model"]) == 0
    assert fake_hub["uploads"][1]["files"]["README.md"].decode() == direct

    metrics = json.loads(json.dumps(METRICS))
    encoder.push_to_hub("me/model", metrics=metrics)
    card = ModelCard(fake_hub["uploads"][2]["files"]["README.md"].decode())
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["map"] == 43.21


def test_base_model_names_the_timm_weights_training_started_from(tmp_path):
    weights = tmp_path / "imagenet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(weights))
    started = ReIDEncoder("test_resnet", pretrained_path=str(weights), input_size=[64, 32])
    started.save_pretrained(tmp_path / "started")
    assert ModelCard.load(tmp_path / "started" / "README.md").data.base_model == "timm/test_resnet.r160_in1k"
    assert ReIDEncoder.from_pretrained(tmp_path / "started").base_model == "timm/test_resnet.r160_in1k"

    ReIDEncoder("test_resnet", input_size=[64, 32]).save_pretrained(tmp_path / "random")
    assert "base_model" not in json.loads((tmp_path / "random" / "config.json").read_text())
    assert ModelCard.load(tmp_path / "random" / "README.md").data.base_model is None


def test_from_pretrained_reads_a_hub_cache_offline(encoder, tmp_path, monkeypatch):
    """A cache laid out as the Hub's (models--user--name/snapshots/<rev>, refs/main) loads with HF_HUB_OFFLINE=1."""
    saved = tmp_path / "saved"
    encoder.save_pretrained(saved)
    repo = tmp_path / "cache" / "models--me--tiny"
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(saved / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = ReIDEncoder.from_pretrained("me/tiny", cache_dir=tmp_path / "cache")
    images = torch.randn(2, 3, 64, 32)
    assert torch.equal(loaded.embed(images), encoder.embed(images))
    with pytest.raises(ModelLoadError, match="me/absent"):
        ReIDEncoder.from_pretrained("me/absent", cache_dir=tmp_path / "cache")


def test_load_encoder_accepts_every_reference(run_dir, encoder):
    images = torch.randn(2, 3, 64, 32)
    for reference in (run_dir, run_dir / "model"):
        assert torch.equal(hub.load_encoder(reference).embed(images), encoder.embed(images))
    with pytest.raises(ModelLoadError, match="no such model folder"):
        hub.load_encoder(run_dir / "nothing")


def test_push_without_a_reachable_hub_is_one_line(run_dir, capsys):
    """The tests run with HF_HUB_OFFLINE=1, as a machine without network or login would fail."""
    assert main(["push", str(run_dir), "--repo-id", "someone/cail-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reid-accel: error: cannot push to someone/cail-model"), err
    assert "hf auth login" in err[0]
