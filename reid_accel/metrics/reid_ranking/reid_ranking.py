"""reid_ranking: exact CMC and mAP for person re-identification, as a Hugging Face `evaluate` module.

A thin wrapper over `reid_accel.metrics.rank_metrics` (Market-1501 protocol: same id + same camera and junk id -1
removed per query, distractors id 0 kept, queries without a true match left out and counted). Load it offline from
the installed package:

    import evaluate
    from reid_accel.metrics import evaluate_module_path

    metric = evaluate.load(evaluate_module_path())
    metric.add_batch(features=query_feats, pids=query_pids, camids=query_camids, splits=["query"] * len(query_pids))
    metric.add_batch(features=gallery_feats, pids=gallery_pids, camids=gallery_camids, splits=["gallery"] * n)
    result = metric.compute(ap_mode="trapezoid")  # {"mAP", "rank1", "rank5", "rank10", "cmc", ...}

`evaluate.load` copies this file into its modules cache (``~/.cache/huggingface/modules`` by default). Where that
folder is not writable, point ``HF_MODULES_CACHE`` at a writable one *before* `evaluate` is imported, e.g.
``HF_MODULES_CACHE=/tmp/hf_modules python ...``.

Speed: `evaluate` keeps every input row in an Arrow table until `compute`. Declared as a list of floats, a
feature vector becomes one Python object per number on the way in and again on the way out (3.4 s for 4,000 x
1,024 features where `rank_metrics` takes 0.13 s). So each row is stored as one binary value, its float32 bytes,
and the column is read back as one numpy buffer: the module then costs a copy or two of the features beyond
`rank_metrics` (see BENCHMARKS.md).
"""

import datasets
import evaluate
import numpy as np
import torch

from reid_accel.errors import ReidAccelError
from reid_accel.metrics.ranking import rank_metrics

_DESCRIPTION = """Exact CMC curve and mAP of cosine-similarity retrieval between the rows marked "query" and the rows
marked "gallery", under the Market-1501 protocol."""

_KWARGS_DESCRIPTION = """
Args:
    features: one L2-normalisable feature vector per image: a (N, D) numpy array or tensor (fastest), or lists.
    pids: person id per image; -1 marks junk gallery images, 0 distractors.
    camids: camera id per image.
    splits: "query" or "gallery" per image.
    ap_mode: "standard" (mean precision at each hit) or "trapezoid" (Market-1501 devkit rule). Default "standard".
    max_rank: length of the CMC curve. Default 50.
    device: where the ranking runs (e.g. "cuda"). Default CPU.
Returns:
    mAP, rank1, rank5, rank10 (fractions), cmc (array of max_rank fractions), num_queries, num_valid_queries,
    ap_mode (the AP convention used).
"""

_CITATION = """@inproceedings{zheng2015scalable,
  title={Scalable Person Re-identification: A Benchmark},
  author={Zheng, Liang and Shen, Liyue and Tian, Lu and Wang, Shengjin and Wang, Jingdong and Tian, Qi},
  booktitle={ICCV},
  year={2015}
}"""

SPLITS = ("query", "gallery")


def _encode_rows(features) -> list[bytes]:
    """(N, D) floats -> N binary values: the row's float32 bytes, then D as an int32.

    The trailing D lets `_decode_rows` catch rows of different lengths, which numpy pads to one width when the
    column is read back.
    """
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    rows = np.asarray(features, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ReidAccelError(f"features has shape {rows.shape}; expected (num_rows, feature_dim)")
    stored = np.empty((len(rows), rows.shape[1] + 1), dtype=np.float32)  # (N, D + 1)
    stored[:, :-1] = rows
    stored[:, -1:].view(np.int32)[:] = rows.shape[1]
    return [row.tobytes() for row in stored]


def _decode_rows(stored: np.ndarray) -> np.ndarray:
    """(N,) fixed-width byte strings, as `evaluate` returns the column -> (N, D) float32 features."""
    words = np.frombuffer(np.asarray(stored, dtype=np.bytes_), dtype=np.float32).reshape(len(stored), -1)  # (N, D + 1)
    if not (words[:, -1].view(np.int32) == words.shape[1] - 1).all():
        raise ReidAccelError(
            f"features rows differ in length (the longest has {words.shape[1] - 1} values); expected one dimension"
        )
    return words[:, :-1]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ReidRanking(evaluate.Metric):
    """CMC / mAP over a query split and a gallery split given row by row."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "features": datasets.Value("large_binary"),  # float32 bytes of one row (see `_encode_rows`)
                    "pids": datasets.Value("int64"),
                    "camids": datasets.Value("int64"),
                    "splits": datasets.Value("string"),
                }
            ),
            format="numpy",
        )

    def add_batch(self, *, features=None, pids=None, camids=None, splits=None):
        """Add rows: `features` (N, D), `pids`, `camids` and `splits` (N,) each."""
        rows = None if features is None else _encode_rows(features)
        super().add_batch(features=rows, pids=pids, camids=camids, splits=splits)

    def add(self, *, features=None, pids=None, camids=None, splits=None):
        """Add one row: `features` (D,), one pid, camid and split."""
        row = None if features is None else _encode_rows([features])[0]
        super().add(features=row, pids=pids, camids=camids, splits=splits)

    def _compute(self, features, pids, camids, splits, ap_mode="standard", max_rank=50, device=None):
        splits = np.asarray(splits)
        unknown = sorted(set(splits.tolist()) - set(SPLITS))
        if unknown:
            raise ReidAccelError(f"splits holds {unknown}; expected only 'query' and 'gallery'")
        query, gallery = splits == "query", splits == "gallery"
        if not query.any() or not gallery.any():
            raise ReidAccelError(f"got {query.sum()} query and {gallery.sum()} gallery rows; expected both")
        features = _decode_rows(features)  # (N, D)
        pids, camids = np.asarray(pids, dtype=np.int64), np.asarray(camids, dtype=np.int64)
        return rank_metrics(
            features[query],
            features[gallery],
            pids[query],
            pids[gallery],
            camids[query],
            camids[gallery],
            ap_mode=ap_mode,
            max_rank=max_rank,
            device=device,
        )
