"""The reid-accel model card: what `save_pretrained`, `push_to_hub` and `reid-accel push` write as `README.md`.

One template for every path, so a model saved from Python and one pushed from the command line read alike: YAML
metadata (library, tags, the timm weights training started from as `base_model`, and `model-index` results when a
run's metrics are known), then prose, usage, results, training settings and the paper.
"""

from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

# The paper is not on arXiv; this is the ECCV 2020 open-access copy (ECVA).
PAPER = "https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123600222.pdf"
CITATION = """@inproceedings{luo2020generalizing,
  title={Generalizing Person Re-Identification by Camera-Aware Invariance Learning and Cross-Domain Mixup},
  author={Luo, Chuanchen and Song, Chunfeng and Zhang, Zhaoxiang},
  booktitle={European Conference on Computer Vision},
  year={2020}
}"""
DATASET_TITLES = {
    "market1501": "Market-1501",
    "dukemtmc": "DukeMTMC-reID",
    "cuhk03": "CUHK03-NP",
    "msmt17": "MSMT17",
    "synthetic": "reid-accel synthetic world",
    "market_style": "Market-style folder",
}


def _dataset_title(name: str) -> str:
    return DATASET_TITLES.get(name, name)


def model_card(encoder_config: dict[str, Any], metrics: dict[str, Any] | None = None, *, repo_id: str = "") -> str:
    """The model card: YAML metadata (with `model-index` results when known), then prose, usage and results.

    Args:
        encoder_config: the encoder's `config.json`.
        metrics: a training run's `metrics.json` (evaluations, run info, config), if there is one.
        repo_id: the Hub repository, used in the loading snippet.
    """
    run_config = (metrics or {}).get("config", {})
    data = run_config.get("data", {})
    source = (data.get("source") or {}).get("name")
    target = (data.get("target") or {}).get("name")
    evaluated = (data.get("eval") or data.get("target") or data.get("source") or {}).get("name")
    evaluations = (metrics or {}).get("evaluations", [])
    last = evaluations[-1] if evaluations else None
    ap_mode = (last or {}).get("ap_mode", "standard")  # runs recorded before it was stored used "standard"
    results = []
    if last is not None and evaluated:
        for key, name in (("mAP", "mAP"), ("rank1", "rank-1"), ("rank5", "rank-5"), ("rank10", "rank-10")):
            results.append(
                EvalResult(
                    task_type="image-feature-extraction",
                    task_name="Person re-identification",
                    dataset_type=evaluated,
                    dataset_name=_dataset_title(evaluated),
                    dataset_split="query/gallery",
                    metric_type=key.lower(),
                    metric_name=name,
                    metric_value=round(100 * last[key], 2),
                )
            )
    card_data = ModelCardData(
        library_name="reid-accel",
        license="apache-2.0",
        tags=["person-reid", "domain-adaptation", "reid-accel", "pytorch", "timm"],
        pipeline_tag="image-feature-extraction",
        datasets=[name for name in (source, target) if name],
        model_name=repo_id or "reid-accel model",
        base_model=encoder_config.get("base_model"),
        eval_results=results or None,
    )
    name = repo_id or "path/to/model"
    title = (
        f"{_dataset_title(source)} → {_dataset_title(target)}" if source and target else _dataset_title(source or "")
    )
    lines = [
        f"# reid-accel person re-ID encoder{': ' + title if title else ''}",
        "",
        f"A `{encoder_config['backbone']}` backbone (last stride {encoder_config['last_stride']}) with a BNNeck, "
        f"producing {encoder_config.get('feature_dim', 'D')}-d features ranked by cosine similarity, trained with "
        f"camera-aware invariance learning and cross-domain mixup ([Luo, Song, Zhang, ECCV 2020]({PAPER}))"
        + (f": labelled {_dataset_title(source)}, unlabelled {_dataset_title(target)}." if target else "."),
        f"Input: RGB images resized to {encoder_config['input_size'][0]}x{encoder_config['input_size'][1]}, "
        f"normalised with mean {encoder_config['mean']} and std {encoder_config['std']}.",
        "",
        "## Use",
        "",
        "```python",
        "from reid_accel.inference import embed_images",
        "from reid_accel.modeling import ReIDEncoder",
        "",
        f'encoder = ReIDEncoder.from_pretrained("{name}")',
        'query = embed_images(encoder, ["query.jpg"])           # (1, D), L2-normalised',
        'gallery = embed_images(encoder, "gallery_folder/")     # (G, D)',
        "ranking = (query @ gallery.T).argsort(dim=1, descending=True)",
        "```",
        "",
        f"Evaluate: `reid-accel eval {name} --dataset market1501 --root Market-1501-v15.09.15`. "
        f"Export: `reid-accel export {name} --format onnx --output reid.onnx`.",
    ]
    if metrics and metrics.get("evaluations"):
        lines += [
            "",
            f"## Results on {_dataset_title(evaluated)} ({ap_mode} AP, Market-1501 protocol)",
            "",
            "| epoch | mAP | rank-1 | rank-5 | rank-10 |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {e['epoch']} | {100 * e['mAP']:.1f} | {100 * e['rank1']:.1f} | {100 * e['rank5']:.1f} "
            f"| {100 * e['rank10']:.1f} |"
            for e in metrics["evaluations"]
        ]
    if metrics and metrics.get("run"):
        run = metrics["run"]
        lines += [
            "",
            "## Training",
            "",
            f"{run.get('global_batch')} images per step in BatchNorm groups of {run.get('bn_batch_size')} "
            f"({run.get('micro_batch_source')} source + {run.get('micro_batch_target')} target per forward), "
            f"on {run.get('world_size')} process(es) x {run.get('micro_batches')} micro-batch(es), mixed precision "
            f"`{run.get('mixed_precision')}`, {run.get('steps_per_epoch')} steps per epoch. Packages: "
            + ", ".join(f"{k} {v}" for k, v in (run.get("packages") or {}).items() if v)
            + ".",
            "",
            "<details><summary>Full training configuration</summary>",
            "",
            "```yaml",
            yaml.safe_dump(run_config, sort_keys=False).rstrip(),
            "```",
            "</details>",
        ]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    card = ModelCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines))
    return str(card)
