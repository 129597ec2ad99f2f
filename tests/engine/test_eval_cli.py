import json
import shutil

import PIL.Image
import torch
from safetensors import safe_open

from reid_accel.cli import main
from reid_accel.data import load_benchmark
from reid_accel.generators.synthetic import generate_world
from reid_accel.hub import save_pretrained
from reid_accel.modeling import ReIDEncoder


def test_eval_end_to_end_writes_metrics_features_and_pictures(tiny_worlds, tmp_path, capsys):
    torch.manual_seed(0)
    save_pretrained(ReIDEncoder("test_resnet", input_size=[64, 32]), tmp_path / "model")
    out = tmp_path / "eval"
    argv = ["eval", str(tmp_path / "model"), "--dataset", "synthetic", "--root", str(tiny_worlds["b"])]
    assert main([*argv, "--output-dir", str(out), "--num-workers", "0", "--flip", "--ap-mode", "trapezoid"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_valid_queries"] == 20 and metrics["ap_mode"] == "trapezoid" and metrics["flip"] is True
    assert f"{100 * metrics['mAP']:.1f}" in printed
    with safe_open(out / "features.safetensors", "pt") as features:
        assert features.get_tensor("query_features").shape == (20, 96)
        assert features.get_tensor("gallery_pids").shape == (50,)
        assert len(json.loads(features.metadata()["gallery_paths"])) == 50
    for picture, min_size in (("cmc.png", (300, 200)), ("rank_list.png", (600, 300))):
        with PIL.Image.open(out / picture) as image:
            assert image.format == "PNG" and image.width >= min_size[0] and image.height >= min_size[1]


def test_eval_of_a_saved_dataset_draws_its_rank_list_from_the_stored_images(tmp_path):
    world = generate_world(tmp_path / "world", domain="b", seed=2, num_ids=4)
    load_benchmark("synthetic", world, cache_dir=tmp_path / "cache").save_to_disk(tmp_path / "saved")
    shutil.rmtree(world)
    save_pretrained(ReIDEncoder("test_resnet", input_size=[64, 32]), tmp_path / "model")
    argv = ["eval", str(tmp_path / "model"), "--dataset", "saved", "--root", str(tmp_path / "saved")]
    assert main([*argv, "--output-dir", str(tmp_path / "eval"), "--num-workers", "0"]) == 0
    with PIL.Image.open(tmp_path / "eval" / "rank_list.png") as image:
        assert image.format == "PNG" and image.width >= 600


def test_eval_with_reranking_runs(tiny_worlds, tmp_path):
    save_pretrained(ReIDEncoder("test_resnet", input_size=[64, 32]), tmp_path / "model")
    argv = ["eval", str(tmp_path / "model"), "--dataset", "synthetic", "--root", str(tiny_worlds["b"])]
    assert main([*argv, "--rerank", "--num-workers", "0"]) == 0


def test_eval_bad_input_is_one_line_and_exit_2(tiny_worlds, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "absent"), "--dataset", "synthetic", "--root", str(tiny_worlds["b"])]) == 2
    assert "no such model folder" in capsys.readouterr().err
    save_pretrained(ReIDEncoder("test_resnet", input_size=[64, 32]), tmp_path / "model")
    assert main(["eval", str(tmp_path / "model"), "--dataset", "market1501", "--root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "none") in err[0]
