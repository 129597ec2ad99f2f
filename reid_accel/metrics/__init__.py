"""Re-identification metrics: exact CMC/mAP, k-reciprocal re-ranking, pictures, and an `evaluate` module.

`evaluate_module_path()` gives the folder of the ``reid_ranking`` module for ``evaluate.load(...)``; this package
itself never imports `evaluate`. Pictures (`reid_accel.metrics.visualize`) need the ``viz`` extra (matplotlib).
"""

from pathlib import Path

from reid_accel.metrics.ranking import AP_MODES, rank_metrics, rank_metrics_from_distance, top_k_gallery
from reid_accel.metrics.rerank import rerank_distance

__all__ = [
    "AP_MODES",
    "evaluate_module_path",
    "rank_metrics",
    "rank_metrics_from_distance",
    "rerank_distance",
    "top_k_gallery",
]


def evaluate_module_path() -> str:
    """Folder holding ``reid_ranking.py``, to pass to ``evaluate.load`` (works offline, shipped as package data)."""
    return str(Path(__file__).resolve().parent / "reid_ranking")
