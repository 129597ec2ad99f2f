"""How strongly do a synthetic world's cameras mask identity? Nearest-neighbour and retrieval figures.

A world is a fair stand-in for re-ID only if a camera's style is a stronger cue than a person's clothes: the
nearest neighbour of an image should often be another person under the same camera, and retrieval with features
that know nothing of identity should sit near chance. Yet identity must stay recoverable: once each camera's own
statistics are removed (per-camera standardisation, the crudest camera-aware step), retrieval should rise well
above chance.

For each feature (raw pixels; a randomly initialised timm network, global-pooled; pixels standardised per camera)
the report gives, over the training split, where each image's nearest other image falls (same or other camera,
same or other person), and over the test split the Market-1501 retrieval mAP and rank-1 (a query's same-id
same-camera gallery images are ignored, distractors with pid 0 stay) next to the mAP of a random ranking.

Usage:
    python scripts/synthetic_report.py ROOT [ROOT ...] [--model test_resnet] [--json OUT]
"""

import argparse
import json
import re
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from reid_accel.fileio import write_json_atomic
from reid_accel.metrics import rank_metrics_from_distance

MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)s\d+_\d+_\d+\.(?:png|jpg)$")
CATEGORIES = ("same_cam_other_id", "same_cam_same_id", "other_cam_same_id", "other_cam_other_id")


def load_split(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8, pids (N,) and 0-based camera ids (N,) of one Market-style folder, sorted by name."""
    images, pids, cams = [], [], []
    for path in sorted(folder.iterdir()):
        match = MARKET_NAME.match(path.name)
        if match is None:
            continue
        images.append(np.asarray(Image.open(path).convert("RGB")))
        pids.append(int(match.group(1)))
        cams.append(int(match.group(2)) - 1)
    return np.stack(images), np.array(pids), np.array(cams)


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Flattened pixels in [0, 1]: (N, H * W * 3)."""
    return images.reshape(len(images), -1).astype(np.float64) / 255.0


def camera_standardised_features(images: np.ndarray, cams: np.ndarray) -> np.ndarray:
    """Pixels with each camera's own per-pixel mean and per-channel spread removed: (N, H * W * 3)."""
    features = pixel_features(images)
    for cam in np.unique(cams):
        rows = cams == cam
        block = features[rows] - features[rows].mean(axis=0)
        features[rows] = block / block.std()
    return features


@torch.no_grad()
def network_features(images: np.ndarray, *, model_name: str = "test_resnet", seed: int = 0) -> np.ndarray:
    """Global-pooled features (N, D) of a randomly initialised timm network in eval mode, L2-normalised."""
    torch.manual_seed(seed)
    model = timm.create_model(model_name, pretrained=False, num_classes=0).eval()
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
    features = torch.cat([model((batch - mean) / std) for batch in x.split(256)])  # (N, D)
    return torch.nn.functional.normalize(features, dim=1).double().numpy()


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (A, B) between the rows of a and b."""
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def top1_shares(features: np.ndarray, pids: np.ndarray, cams: np.ndarray) -> dict[str, float]:
    """Share of images whose nearest other image falls in each of CATEGORIES."""
    dist = squared_distances(features, features)
    np.fill_diagonal(dist, np.inf)
    nearest = dist.argmin(axis=1)
    same_cam = cams[nearest] == cams
    same_id = pids[nearest] == pids
    masks = (same_cam & ~same_id, same_cam & same_id, ~same_cam & same_id, ~same_cam & ~same_id)
    return {name: float(mask.mean()) for name, mask in zip(CATEGORIES, masks, strict=True)}


def retrieval(
    dist: np.ndarray, q_pids: np.ndarray, q_cams: np.ndarray, g_pids: np.ndarray, g_cams: np.ndarray
) -> dict[str, float]:
    """Market-1501 mAP ("standard" AP: precision averaged at each hit) and rank-1 from a (Q, G) distance matrix."""
    scores = rank_metrics_from_distance(dist, q_pids, g_pids, q_cams, g_cams)
    return {"mAP": scores["mAP"], "rank1": scores["rank1"]}


def chance_map(
    q_pids: np.ndarray, q_cams: np.ndarray, g_pids: np.ndarray, g_cams: np.ndarray, *, draws: int = 20, seed: int = 0
) -> float:
    """mAP of random rankings, averaged over `draws` draws: the floor a feature must beat."""
    rng = np.random.default_rng(seed)
    shape = (len(q_pids), len(g_pids))
    return float(np.mean([retrieval(rng.random(shape), q_pids, q_cams, g_pids, g_cams)["mAP"] for _ in range(draws)]))


def report(root: str | Path, *, model_name: str = "test_resnet") -> dict:
    """All figures for the world at `root`: {"top1_train": {feature: shares}, "test": {feature: mAP/rank1}}."""
    root = Path(root)
    train_images, train_pids, train_cams = load_split(root / "bounding_box_train")
    q_images, q_pids, q_cams = load_split(root / "query")
    g_images, g_pids, g_cams = load_split(root / "bounding_box_test")
    test_images = np.concatenate([q_images, g_images])
    test_cams = np.concatenate([q_cams, g_cams])
    extractors = {
        "pixels": lambda images, cams: pixel_features(images),
        "random_net": lambda images, cams: network_features(images, model_name=model_name),
        "camera_standardised_pixels": camera_standardised_features,
    }
    result = {"root": str(root), "top1_train": {}, "test": {}}
    for name, extract in extractors.items():
        result["top1_train"][name] = top1_shares(extract(train_images, train_cams), train_pids, train_cams)
        test_features = extract(test_images, test_cams)
        dist = squared_distances(test_features[: len(q_pids)], test_features[len(q_pids) :])
        result["test"][name] = retrieval(dist, q_pids, q_cams, g_pids, g_cams)
    result["test"]["random_ranking"] = {"mAP": chance_map(q_pids, q_cams, g_pids, g_cams)}
    world_file = root / "world.json"
    if world_file.is_file():
        result["world"] = json.loads(world_file.read_text())["parameters"]
    return result


def format_report(result: dict) -> str:
    """A plain-text table of `report`'s figures, in percent."""
    lines = [f"world: {result['root']}  {result.get('world', '')}", "train split, where the top-1 neighbour falls:"]
    lines.append(f"  {'feature':<28}" + "".join(f"{name:>20}" for name in CATEGORIES))
    for feature, shares in result["top1_train"].items():
        lines.append(f"  {feature:<28}" + "".join(f"{100 * shares[name]:>19.1f}%" for name in CATEGORIES))
    lines.append("test split retrieval (Market protocol):")
    for feature, scores in result["test"].items():
        lines.append(f"  {feature:<28}" + "".join(f"{key:>8} {100 * value:5.1f}%" for key, value in scores.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="world folders written by generate_world")
    parser.add_argument("--model", default="test_resnet", help="timm architecture for the random-init features")
    parser.add_argument("--json", type=Path, help="also write all figures to this JSON file")
    args = parser.parse_args()
    results = [report(root, model_name=args.model) for root in args.roots]
    print("\n\n".join(format_report(result) for result in results))
    if args.json:
        write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()
