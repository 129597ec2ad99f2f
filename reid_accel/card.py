"""The reid-accel model card, the `README.md` of every model folder, whichever path wrote it.

One template: YAML metadata (library, tags, the timm weights training started from as `base_model`, and
`model-index` results when the model comes from a run), then prose, usage, results, training settings and the
paper. A run's part is read from its config object, its evaluations and the benchmark registry's titles, so the
engine's card at the end of `train()` and the one `reid-accel push` uploads are the same card.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from reid_accel.config import ExperimentConfig, dump_config, load_config
from reid_accel.data.benchmarks import get_benchmark
from reid_accel.folders import RunFolder

# The paper is not on arXiv; this is the ECCV 2020 open-access copy (ECVA).
PAPER = "https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123600222.pdf"
CITATION = """@inproceedings{luo2020generalizing,
  title={Generalizing Person Re-Identification by Camera-Aware Invariance Learning and Cross-Domain Mixup},
  author={Luo, Chuanchen and Song, Chunfeng and Zhang, Zhaoxiang},
  booktitle={European Conference on Computer Vision},
  year={2020}
}"""


@dataclass(frozen=True)
class TrainingRecord:
    """What a card says of the run that trained the model: its config, its evaluations (oldest first, fractions as
    `metrics.json` keeps them) and how it ran (`metrics.json`'s `run`: batch arithmetic, precision, packages)."""

    config: ExperimentConfig
    evaluations: tuple[Mapping[str, Any], ...]
    run_info: Mapping[str, Any]

    @classmethod
    def read(cls, run: RunFolder) -> "TrainingRecord | None":
        """The record a finished run folder keeps, or None when it has no metrics."""
        if not run.metrics.is_file():
            return None
        metrics = json.loads(run.metrics.read_text())
        return cls(load_config(run.config), tuple(metrics["evaluations"]), metrics["run"])


def _title(name: str) -> str:
    return get_benchmark(name)[1].title


def model_card(encoder_config: Mapping[str, Any], training: TrainingRecord | None = None, *, repo_id: str = "") -> str:
    """The model card: YAML metadata (with `model-index` results when known), then prose, usage and results.

    Args:
        encoder_config: the encoder's `config.json` (`ReIDEncoder.export_config()`).
        training: the run that trained the model, when the card should report it.
        repo_id: the Hub repository, used in the loading snippet.
    """
    data = training.config.data if training is not None else None
    source = data.source.name if data is not None else None
    target = data.target.name if data is not None and data.target is not None else None
    evaluations = training.evaluations if training is not None else ()
    last = evaluations[-1] if evaluations else None
    results = []
    if last is not None:
        evaluated = training.config.eval_domain.name
        for key, name in (("mAP", "mAP"), ("rank1", "rank-1"), ("rank5", "rank-5"), ("rank10", "rank-10")):
            results.append(
                EvalResult(
                    task_type="image-feature-extraction",
                    task_name="Person re-identification",
                    dataset_type=evaluated,
                    dataset_name=_title(evaluated),
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
    title = f"{_title(source)} → {_title(target)}" if target else _title(source) if source else ""
    lines = [
        f"# reid-accel person re-ID encoder{': ' + title if title else ''}",
        "",
        f"A `{encoder_config['backbone']}` backbone (last stride {encoder_config['last_stride']}) with a BNNeck, "
        f"producing {encoder_config.get('feature_dim', 'D')}-d features ranked by cosine similarity, trained with "
        f"camera-aware invariance learning and cross-domain mixup ([Luo, Song, Zhang, ECCV 2020]({PAPER}))"
        + (f": labelled {_title(source)}, unlabelled {_title(target)}." if target else "."),
        f"Input: RGB images resized to {encoder_config['input_size'][0]}x{encoder_config['input_size'][1]}, "
        f"normalised with mean {encoder_config['mean']} and std {encoder_config['std']}.",
        "",
        "## Use",
        "",
        "```python",
        "from reid_accel.hub import from_pretrained",
        "from reid_accel.inference import embed_images",
        "",
        f'encoder = from_pretrained("{name}")',
        'query = embed_images(encoder, ["query.jpg"])           # (1, D), L2-normalised',
        'gallery = embed_images(encoder, "gallery_folder/")     # (G, D)',
        "ranking = (query @ gallery.T).argsort(dim=1, descending=True)",
        "```",
        "",
        f"Evaluate: `reid-accel eval {name} --dataset market1501 --root Market-1501-v15.09.15`. "
        f"Export: `reid-accel export {name} --format onnx --output reid.onnx`.",
    ]
    if last is not None:
        ap_mode = last.get("ap_mode", "standard")  # runs recorded before it was stored used "standard"
        lines += [
            "",
            f"## Results on {_title(training.config.eval_domain.name)} ({ap_mode} AP, Market-1501 protocol)",
            "",
            "| epoch | mAP | rank-1 | rank-5 | rank-10 |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {e['epoch']} | {100 * e['mAP']:.1f} | {100 * e['rank1']:.1f} | {100 * e['rank5']:.1f} "
            f"| {100 * e['rank10']:.1f} |"
            for e in evaluations
        ]
    if training is not None:
        run = training.run_info
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
            dump_config(training.config).rstrip(),
            "```",
            "</details>",
        ]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    card = ModelCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines))
    return str(card)
