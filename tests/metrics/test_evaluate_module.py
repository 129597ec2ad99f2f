"""The `evaluate` module: loaded offline by path, with HF_MODULES_CACHE in a temporary folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from reid_accel.metrics import evaluate_module_path, rank_metrics

SCRIPT = """
import json, sys
import evaluate
import numpy as np
import torch
from reid_accel.metrics import evaluate_module_path

data = np.load(sys.argv[1])
metric = evaluate.load(evaluate_module_path(), keep_in_memory=True)
results = {}
# two batches: queries, then the gallery in two parts
metric.add_batch(features=data["qf"], pids=data["qp"], camids=data["qc"], splits=["query"] * len(data["qp"]))
half = len(data["gp"]) // 2
for part in (slice(0, half), slice(half, None)):
    metric.add_batch(
        features=data["gf"][part], pids=data["gp"][part], camids=data["gc"][part],
        splits=["gallery"] * len(data["gp"][part]),
    )
out = metric.compute(ap_mode="trapezoid", max_rank=10)
results["batched"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in out.items()}
# one compute call with everything, rows interleaved
features = np.concatenate([data["gf"][:5], data["qf"], data["gf"][5:]])
pids = np.concatenate([data["gp"][:5], data["qp"], data["gp"][5:]])
camids = np.concatenate([data["gc"][:5], data["qc"], data["gc"][5:]])
splits = ["gallery"] * 5 + ["query"] * len(data["qp"]) + ["gallery"] * (len(data["gp"]) - 5)
out = metric.compute(features=features, pids=pids, camids=camids, splits=splits)
results["direct"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in out.items()}
try:
    metric.compute(features=features[:2], pids=pids[:2], camids=camids[:2], splits=["query", "probe"])
except ValueError as error:
    results["error"] = str(error)
# row by row, features as a tensor and as plain lists
for row in range(len(pids)):
    value = torch.from_numpy(features[row]) if row % 2 else features[row].tolist()
    metric.add(features=value, pids=int(pids[row]), camids=int(camids[row]), splits=splits[row])
out = metric.compute()
results["rows"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in out.items()}
metric.add_batch(features=features[:3], pids=pids[:3], camids=camids[:3], splits=splits[:3])
metric.add_batch(features=features[3:, :-1], pids=pids[3:], camids=camids[3:], splits=splits[3:])
try:
    metric.compute()
except ValueError as error:
    results["lengths"] = str(error)
print(json.dumps(results))
"""


def test_load_by_path_compute_and_add_batch(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 12))
    qp, gp = rng.integers(0, 6, 15), rng.integers(-1, 6, 60)
    qc, gc = rng.integers(0, 3, 15), rng.integers(0, 3, 60)
    qf = (centers[qp] + rng.normal(size=(15, 12))).astype(np.float32)
    gf = (centers[np.maximum(gp, 0)] + rng.normal(size=(60, 12))).astype(np.float32)
    np.savez(tmp_path / "data.npz", qf=qf, gf=gf, qp=qp, gp=gp, qc=qc, gc=gc)
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HOME=str(tmp_path / "hf"))
    env.update(HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "data.npz")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert list((tmp_path / "modules").rglob("reid_ranking.py"))  # the module was copied into the given cache

    expected = rank_metrics(qf, gf, qp, gp, qc, gc, ap_mode="trapezoid", max_rank=10)
    batched = results["batched"]
    for key in ("mAP", "rank1", "rank5", "rank10", "num_queries", "num_valid_queries"):
        assert batched[key] == expected[key], key
    np.testing.assert_allclose(batched["cmc"], expected["cmc"])
    direct = results["direct"]
    assert direct["mAP"] == rank_metrics(qf, gf, qp, gp, qc, gc)["mAP"]
    assert len(direct["cmc"]) == 50
    assert "splits holds ['probe']" in results["error"]
    assert results["rows"] == direct
    assert "features rows differ in length (the longest has 12 values)" in results["lengths"]


def test_module_path_is_package_data():
    folder = Path(evaluate_module_path())
    assert folder.name == "reid_ranking" and (folder / "reid_ranking.py").is_file()
    assert "import evaluate" not in (folder.parent / "__init__.py").read_text()
