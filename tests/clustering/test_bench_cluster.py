"""The shipped clustering benchmark runs, and its dense and sparse ways give the same pseudo-labels."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_cluster.py"


def test_bench_cluster_dense_and_sparse_agree(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--compare-size", "200", "--full-size", "0", "--repeat", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {
        line.split("|")[2].strip(): line.split("|") for line in done.stdout.splitlines() if line.startswith("| 200")
    }
    assert set(rows) == {"sparse", "dense"}
    assert rows["sparse"][-2].strip() == "ARI 1.000000, identical"
    assert int(rows["sparse"][9].replace(",", "")) > 5  # clusters found
    assert int(rows["sparse"][8].replace(",", "")) < int(rows["dense"][8].replace(",", ""))  # fewer stored
