"""Trained models that travel: model cards with results, pushing to the Hub, loading any model reference, and
embedding images downstream with the preprocessing the model was trained with.

A model folder holds exactly `model.safetensors`, `config.json` and the card `README.md`. A training run folder
adds `metrics.json` beside its `model/`; the card's results come from there.
"""

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import PIL.Image
import torch
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData, upload_folder
from huggingface_hub import create_repo as hub_create_repo
from safetensors.torch import load_file

from reid_accel.config import load_config
from reid_accel.data import build_transform, decode_image
from reid_accel.errors import ModelLoadError
from reid_accel.fileio import write_text_atomic
from reid_accel.modeling import ReIDEncoder

logger = logging.getLogger(__name__)

MODEL_FILES = ("model.safetensors", "config.json", "README.md")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
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
        "camera-aware invariance learning and cross-domain mixup (Luo, Song, Zhang, ECCV 2020)"
        + (f": labelled {_dataset_title(source)}, unlabelled {_dataset_title(target)}." if target else "."),
        f"Input: RGB images resized to {encoder_config['input_size'][0]}x{encoder_config['input_size'][1]}, "
        f"normalised with mean {encoder_config['mean']} and std {encoder_config['std']}.",
        "",
        "## Use",
        "",
        "```python",
        "from reid_accel.hub import embed_images",
        "from reid_accel.modeling import ReIDEncoder",
        "",
        f'encoder = ReIDEncoder.from_pretrained("{name}")',
        'query = embed_images(encoder, ["query.jpg"])           # (1, D), L2-normalised',
        'gallery = embed_images(encoder, "gallery_folder/")     # (G, D)',
        "ranking = (query @ gallery.T).argsort(dim=1, descending=True)",
        "```",
        "",
        f"Evaluate: `reid-accel eval {name} --dataset market1501 --root Market-1501-v15.09.15`.",
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
            f"{run.get('world_size')} process(es) x ({run.get('per_process_source')} source + "
            f"{run.get('per_process_target')} target) images per step, mixed precision "
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


def write_model_card(
    model_dir: str | os.PathLike, *, metrics_path: str | os.PathLike | None = None, repo_id: str = ""
) -> Path:
    """(Re)write `model_dir/README.md` from its `config.json` and, when given, a run's `metrics.json`."""
    model_dir = Path(model_dir)
    encoder_config = json.loads((model_dir / "config.json").read_text())
    metrics = json.loads(Path(metrics_path).read_text()) if metrics_path and Path(metrics_path).is_file() else None
    path = model_dir / "README.md"
    write_text_atomic(path, model_card(encoder_config, metrics, repo_id=repo_id))
    return path


def resolve_model_folder(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """Map a run folder or a model folder to (model folder, the run's metrics.json or None)."""
    path = Path(path)
    if (path / "model" / "config.json").is_file():
        metrics = path / "metrics.json"
        return path / "model", metrics if metrics.is_file() else None
    if (path / "config.json").is_file():
        metrics = path.parent / "metrics.json"
        return path, metrics if metrics.is_file() else None
    raise ModelLoadError(f"{path}: neither a model folder (config.json, model.safetensors) nor a run folder (model/)")


def push_model(
    path: str | os.PathLike,
    *,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
) -> str:
    """Refresh the card and upload a model folder (or a run's `model/`) to the Hub; returns the commit URL.

    Only the model files travel: no checkpoint, optimizer or memory. The token comes from `huggingface-cli login`
    or `HF_TOKEN` unless given.
    """
    model_dir, metrics = resolve_model_folder(path)
    missing = [name for name in MODEL_FILES[:2] if not (model_dir / name).is_file()]
    if missing:
        raise ModelLoadError(f"{model_dir}: missing {', '.join(missing)}")
    write_model_card(model_dir, metrics_path=metrics, repo_id=repo_id)
    hub_create_repo(repo_id, private=private, exist_ok=True, token=token, repo_type="model")
    info = upload_folder(
        repo_id=repo_id,
        folder_path=model_dir,
        allow_patterns=list(MODEL_FILES),
        revision=revision,
        token=token,
        commit_message="Upload reid-accel model",
    )
    return str(getattr(info, "commit_url", info))


def load_encoder(reference: str | os.PathLike, *, device: str | torch.device = "cpu") -> ReIDEncoder:
    """Load an encoder from a model folder, a run folder, a training checkpoint folder or a Hub repo id.

    A checkpoint folder (`checkpoints/checkpoint_<i>`) holds the whole training network and the run's config; its
    encoder weights are taken strictly (every key present, none left over).
    """
    path = Path(reference)
    if (path / "train_state.json").is_file():
        return _encoder_from_checkpoint(path).to(device)
    if path.is_dir():
        model_dir, _ = resolve_model_folder(path)
        return ReIDEncoder.from_pretrained(model_dir).to(device)
    if path.exists() or str(reference).startswith((".", "/")) or str(reference).count("/") != 1:
        raise ModelLoadError(f"{reference}: no such model folder, and not a Hub repo id (user/name)")
    return ReIDEncoder.from_pretrained(str(reference)).to(device)


def _encoder_from_checkpoint(folder: Path) -> ReIDEncoder:
    cfg = load_config(folder / "config.yaml")
    encoder = ReIDEncoder(
        cfg.model.backbone,
        pretrained=False,
        last_stride=cfg.model.last_stride,
        input_size=[cfg.data.height, cfg.data.width],
    )
    weights = load_file(folder / "model.safetensors")
    prefix = "encoder."
    state = {k.removeprefix("module.").removeprefix(prefix): v for k, v in weights.items() if prefix in k}
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"{folder}: checkpoint does not match {cfg.model.backbone}: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    return encoder.eval()


ImageInput = str | os.PathLike | PIL.Image.Image


def _list_images(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    if isinstance(images, str | os.PathLike) and Path(images).is_dir():
        files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ModelLoadError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    if isinstance(images, str | os.PathLike | PIL.Image.Image):
        return [images]
    return list(images)


@torch.no_grad()
def embed_images(
    encoder: ReIDEncoder, images: ImageInput | Sequence[ImageInput], *, batch_size: int = 64, flip: bool = False
) -> torch.Tensor:
    """L2-normalised features of PIL images, image files or every image of a folder (sorted by path).

    The preprocessing (size, mean, std) is the one recorded in the encoder's config, i.e. the one it was trained
    with. With `flip`, each feature averages the image and its mirror.

    Returns:
        (N, D) float32 tensor on the encoder's device, rows in input order.
    """
    height, width = encoder.input_size
    transform = build_transform(height, width, mean=encoder.mean, std=encoder.std)
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    items = _list_images(images)
    features = []
    for start in range(0, len(items), batch_size):
        batch = [_as_pil(item) for item in items[start : start + batch_size]]
        pixels = torch.stack([transform(image) for image in batch]).to(device)  # (b, 3, H, W)
        out = encoder(pixels)
        if flip:
            out = out + encoder(pixels.flip(-1))
        features.append(torch.nn.functional.normalize(out.float(), dim=1))
    encoder.train(was_training)
    return torch.cat(features)


def _as_pil(item: ImageInput) -> PIL.Image.Image:
    return item.convert("RGB") if isinstance(item, PIL.Image.Image) else decode_image(str(item))
