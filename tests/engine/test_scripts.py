"""The shipped benchmark and ablation scripts run against the current training step and report what they claim."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def run_script(name: str, *args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table(stdout: str) -> dict[str, list[str]]:
    """Markdown rows of the output by their first cell."""
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_bench_train_ratio_and_breakdown(write_config, tmp_path):
    config = write_config(data={"batch_size": 16})
    out = run_script(
        "bench_train.py", "--config", str(config), "--parts", "ratio", "breakdown", "--steps", "2", cwd=tmp_path
    )
    rows = table(out)
    assert float(rows["throughput"][-1].split()[0]) > 0  # "0.87 of the bare step"
    whole = next(cells for name, cells in rows.items() if name.startswith("whole step"))
    step_ms = float(whole[0])
    ranges = {name: float(cells[0]) for name, cells in rows.items() if name.startswith("reid_accel.")}
    expected = {"augmentation", "forward", "objective", "target_branch", "neighbour_diagnostics", "backward"}
    assert {f"reid_accel.{name}" for name in expected | {"optimizer", "state_update"}} <= set(ranges)
    top_level = ("augmentation", "forward", "objective", "backward", "optimizer", "state_update")
    assert 0 < sum(ranges[f"reid_accel.{name}"] for name in top_level) <= step_ms * 1.05  # ranges nest, not overlap
    assert ranges["reid_accel.neighbour_diagnostics"] <= ranges["reid_accel.target_branch"]
    assert ranges["reid_accel.target_branch"] <= ranges["reid_accel.objective"]


def test_ablation_pairs_runs_by_seed_and_reuses_finished_runs(write_config, tmp_path):
    config = write_config(optim={"epochs": 1, "milestones": [1]})
    args = ["--config", str(config), "--seeds", "0", "1", "--variants", "intra", "intra_inter", "--jobs", "2"]
    out_dir = tmp_path / "ablation"
    run_script("ablation.py", *args, "--output-dir", str(out_dir), cwd=tmp_path)
    result = json.loads((out_dir / "ablation.json").read_text())
    maps = {(r["variant"], r["seed"]): r["mAP"] for r in result["runs"]}
    assert set(maps) == {(v, s) for v in ("intra", "intra_inter") for s in (0, 1)}
    for variant in ("intra", "intra_inter"):
        stats = result["variants"][variant]["mAP"]
        values = [maps[variant, s] for s in (0, 1)]
        assert stats["n"] == 2 and stats["mean"] == pytest.approx(sum(values) / 2)
        assert stats["low"] <= stats["mean"] <= stats["high"]
    gains = [maps["intra_inter", s] - maps["intra", s] for s in (0, 1)]
    assert result["parts"]["inter-camera term"]["mean"] == pytest.approx(sum(gains) / 2)
    assert set(result["parts"]) == {"inter-camera term"}  # parts whose pair of variants did not run are left out

    weights = out_dir / "intra-seed0" / "model" / "model.safetensors"
    written = weights.stat().st_mtime_ns
    run_script("ablation.py", *args, "--output-dir", str(out_dir), cwd=tmp_path)
    assert weights.stat().st_mtime_ns == written


def test_bench_train_ratio_times_the_camera_proxy_step(write_config, camera_proxy_sections, tmp_path):
    config = write_config(**camera_proxy_sections)
    rows = table(
        run_script("bench_train.py", "--config", str(config), "--parts", "ratio", "--steps", "2", cwd=tmp_path)
    )
    assert float(rows["throughput"][-1].split()[0]) > 0


def test_ablation_starts_the_adaptive_clustering_run_from_the_source_only_run(
    write_config, camera_proxy_sections, tmp_path
):
    config = write_config(optim={"epochs": 1, "milestones": [1]})
    clustering = {**camera_proxy_sections, "optim": {"epochs": 1, "milestones": [1]}}
    (tmp_path / "synthetic_camera_proxy.yaml").write_text(write_config("proxy.yaml", **clustering).read_text())
    out_dir = tmp_path / "ablation"
    args = ["--config", str(config), "--seeds", "0", "--variants", "source_only", "camera_proxy_adaptive"]
    run_script("ablation.py", *args, "--output-dir", str(out_dir), cwd=tmp_path)
    result = json.loads((out_dir / "ablation.json").read_text())
    adaptive = next(r for r in result["runs"] if r["variant"] == "camera_proxy_adaptive")
    assert f"model.init_from={out_dir}/source_only-seed0/model" in adaptive["command"]
    assert "synthetic_camera_proxy.yaml" in adaptive["command"]
    assert set(result["parts"]) == {"clustering from the source-only model (vs source only)"}
