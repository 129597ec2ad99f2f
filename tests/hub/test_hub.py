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
from reid_accel.card import TrainingRecord
from reid_accel.cli import main
from reid_accel.config import dump_config, load_config
from reid_accel.engine.state import load_encoder
from reid_accel.errors import ModelLoadError
from reid_accel.folders import RunFolder
from reid_accel.hub import from_pretrained, save_pretrained
from reid_accel.modeling import ReIDEncoder

CONFIG = load_config(None, ["data.source.name=dukemtmc", "data.target={name: market1501}"])
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
    "config": CONFIG.to_dict(),
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
    """A finished run's folder as the engine leaves it: config, metrics, and the model with the run's card."""
    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    run.config.write_text(dump_config(CONFIG))
    run.metrics.write_text(json.dumps(METRICS))
    save_pretrained(encoder, run.model.root, training=TrainingRecord.read(run))
    return run.root


def test_save_then_load_gives_identical_features(encoder, tmp_path):
    save_pretrained(encoder, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["pretrained"] is False and config["pretrained_path"] is None and config["feature_dim"] == 96
    loaded = from_pretrained(tmp_path / "m")
    images = torch.randn(3, 3, 64, 32)
    assert torch.equal(encoder.embed(images), loaded.embed(images))
    assert loaded.input_size == (64, 32) and loaded.mean == encoder.mean


def test_save_pretrained_rewrites_a_stale_card(encoder, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "README.md").write_text("stale")
    save_pretrained(encoder, tmp_path / "m")
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
    save_pretrained(encoder, folder)
    corrupt(folder)
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        from_pretrained(folder)


def _drop_weight(folder, key):
    weights = load_file(folder / "model.safetensors")
    del weights[key]
    save_file(weights, folder / "model.safetensors")


def _edit_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_model_card_metadata_parses_and_carries_the_results(run_dir, encoder, tmp_path):
    training = TrainingRecord.read(RunFolder(run_dir))
    card_path = save_pretrained(encoder, tmp_path / "m", training=training, repo_id="me/duke2market").card
    card = ModelCard.load(card_path)
    data = card.data.to_dict()
    assert data["library_name"] == "reid-accel" and "person-reid" in data["tags"]
    assert data["datasets"] == ["dukemtmc", "market1501"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"map": 43.21, "rank1": 60.0, "rank5": 80.0, "rank10": 90.0}
    assert card.data.eval_results[0].dataset_name == "Market-1501"  # the title the benchmark declares
    assert "# reid-accel person re-ID encoder: DukeMTMC-reID → Market-1501" in card.text
    assert "| 2 | 43.2 | 60.0 | 80.0 | 90.0 |" in card.text
    assert 'from_pretrained("me/duke2market")' in card.text and "@inproceedings{luo2020" in card.text
    assert yaml.safe_load(card.content.split("---")[1])["model-index"][0]["results"]
    assert "(standard AP, Market-1501 protocol)" in card.text  # entries without `ap_mode` predate it: standard
    assert dump_config(CONFIG).rstrip() in card.text


def test_model_card_names_the_ap_convention_of_the_evaluations(run_dir, encoder, tmp_path):
    run = RunFolder(run_dir)
    metrics = json.loads(run.metrics.read_text())
    for evaluation in metrics["evaluations"]:
        evaluation["ap_mode"] = "trapezoid"
    run.metrics.write_text(json.dumps(metrics))
    card = ModelCard.load(save_pretrained(encoder, tmp_path / "m", training=TrainingRecord.read(run)).card)
    assert "## Results on Market-1501 (trapezoid AP, Market-1501 protocol)" in card.text


class FakeHub:
    """Records repo creation and commits instead of talking to the Hub; each commit maps file names to bytes."""

    def __init__(self) -> None:
        self.repos: list[tuple[str, dict]] = []
        self.commits: list[dict] = []

    def __call__(self, token=None):
        return self

    def create_repo(self, repo_id, **kwargs):
        self.repos.append((repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        files = {}
        for op in operations:
            content = op.path_or_fileobj
            files[op.path_in_repo] = Path(content).read_bytes() if isinstance(content, str) else content
        self.commits.append({"repo_id": repo_id, **kwargs, "files": files})
        return "https://huggingface.co/me/model/commit/abc"


@pytest.fixture
def fake_hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setattr(hub, "HfApi", fake)
    return fake


def test_push_sends_only_the_model_files_and_leaves_the_folder_alone(run_dir, fake_hub):
    (run_dir / "checkpoints").mkdir()
    card_before = (run_dir / "model" / "README.md").read_text()
    assert main(["push", str(run_dir), "--repo-id", "me/model", "--private"]) == 0
    assert fake_hub.repos == [("me/model", {"private": True, "exist_ok": True, "repo_type": "model"})]
    (commit,) = fake_hub.commits
    assert sorted(commit["files"]) == ["README.md", "config.json", "model.safetensors"]
    assert commit["files"]["model.safetensors"] == (run_dir / "model" / "model.safetensors").read_bytes()
    assert "43.2" in commit["files"]["README.md"].decode()
    assert (run_dir / "model" / "README.md").read_text() == card_before


def test_every_path_writes_the_same_card(encoder, run_dir, tmp_path, fake_hub):
    """save_pretrained, the engine's run card and `reid-accel push` write one card, differing only in the repo id."""
    save_pretrained(encoder, tmp_path / "direct", repo_id="me/model")
    direct = (tmp_path / "direct" / "README.md").read_text()
    assert "More Information Needed" not in direct and "@inproceedings{luo2020" in direct
    assert "ecva.net/papers/eccv_2020/papers_ECCV/papers/123600222.pdf" in direct
    assert 'from_pretrained("me/model")' in direct

    assert main(["push", str(tmp_path / "direct"), "--repo-id", "me/model"]) == 0
    assert fake_hub.commits[0]["files"]["README.md"].decode() == direct

    run = RunFolder(run_dir)
    with_results = save_pretrained(encoder, tmp_path / "named", training=TrainingRecord.read(run), repo_id="me/model")
    assert main(["push", str(run_dir), "--repo-id", "me/model"]) == 0
    assert fake_hub.commits[1]["files"]["README.md"].decode() == with_results.card.read_text()
    engine_card = run.model.card.read_text()  # the same record, without a repo id
    assert "| 2 | 43.2 | 60.0 | 80.0 | 90.0 |" in engine_card and 'from_pretrained("path/to/model")' in engine_card


def test_base_model_names_the_timm_weights_training_started_from(tmp_path):
    weights = tmp_path / "imagenet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(weights))
    started = ReIDEncoder("test_resnet", pretrained_path=str(weights), input_size=[64, 32])
    save_pretrained(started, tmp_path / "started")
    assert ModelCard.load(tmp_path / "started" / "README.md").data.base_model == "timm/test_resnet.r160_in1k"
    assert from_pretrained(tmp_path / "started").base_model == "timm/test_resnet.r160_in1k"

    save_pretrained(ReIDEncoder("test_resnet", input_size=[64, 32]), tmp_path / "random")
    assert "base_model" not in json.loads((tmp_path / "random" / "config.json").read_text())
    assert ModelCard.load(tmp_path / "random" / "README.md").data.base_model is None


def test_from_pretrained_reads_a_hub_cache_offline(encoder, tmp_path, monkeypatch):
    """A cache laid out as the Hub's (models--user--name/snapshots/<rev>, refs/main) loads with HF_HUB_OFFLINE=1."""
    saved = tmp_path / "saved"
    save_pretrained(encoder, saved)
    repo = tmp_path / "cache" / "models--me--tiny"
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(saved / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = from_pretrained("me/tiny", cache_dir=tmp_path / "cache")
    images = torch.randn(2, 3, 64, 32)
    assert torch.equal(loaded.embed(images), encoder.embed(images))
    with pytest.raises(ModelLoadError, match="me/absent"):
        from_pretrained("me/absent", cache_dir=tmp_path / "cache")


def test_load_encoder_accepts_every_reference(run_dir, encoder):
    images = torch.randn(2, 3, 64, 32)
    for reference in (run_dir, run_dir / "model"):
        assert torch.equal(load_encoder(reference).embed(images), encoder.embed(images))
    with pytest.raises(ModelLoadError, match="no such model folder"):
        load_encoder(run_dir / "nothing")


def test_push_without_a_reachable_hub_is_one_line(run_dir, capsys):
    """The tests run with HF_HUB_OFFLINE=1, as a machine without network or login would fail."""
    assert main(["push", str(run_dir), "--repo-id", "someone/cail-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reid-accel: error: cannot push to someone/cail-model"), err
    assert "hf auth login" in err[0]
