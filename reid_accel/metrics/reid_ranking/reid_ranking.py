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
"""

import datasets
import evaluate
import numpy as np

from reid_accel.errors import ReidAccelError
from reid_accel.metrics.ranking import rank_metrics

_DESCRIPTION = """Exact CMC curve and mAP of cosine-similarity retrieval between the rows marked "query" and the rows
marked "gallery", under the Market-1501 protocol."""

_KWARGS_DESCRIPTION = """
Args:
    features: one L2-normalisable feature vector (list of floats) per image.
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
                    "features": datasets.Sequence(datasets.Value("float32")),
                    "pids": datasets.Value("int64"),
                    "camids": datasets.Value("int64"),
                    "splits": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, features, pids, camids, splits, ap_mode="standard", max_rank=50, device=None):
        splits = np.asarray(splits)
        unknown = sorted(set(splits.tolist()) - set(SPLITS))
        if unknown:
            raise ReidAccelError(f"splits holds {unknown}; expected only 'query' and 'gallery'")
        query, gallery = splits == "query", splits == "gallery"
        if not query.any() or not gallery.any():
            raise ReidAccelError(f"got {query.sum()} query and {gallery.sum()} gallery rows; expected both")
        features = np.asarray(features, dtype=np.float32)  # (N, D)
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
