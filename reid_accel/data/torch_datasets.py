"""torch Datasets over benchmark splits: one split for embedding, and source + target for training.

Images are decoded on demand (in the loader's workers): from the split's paths, or from the image bytes the split
stores when it was saved with `save_to_disk` or pulled from the Hub (its paths then point nowhere). With `preload`
every image is decoded and transformed once, when the dataset is built, and kept in memory: for small datasets and
CPU runs, where decoding each image again every epoch costs as much as a fair share of the training step. The pid
and camid columns are read once, through Arrow. An image that cannot be decoded raises `DatasetLayoutError`
naming its path instead of failing somewhere inside a worker.
"""

from collections.abc import Callable
from typing import Any

import PIL.Image
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from reid_accel.data.hf import column_values, decode_image, decode_stored_image, stores_image_bytes

Transform = Callable[[PIL.Image.Image], torch.Tensor]


class ReIDImageDataset(Dataset):
    """One split of `load_benchmark`, e.g. the query or gallery for evaluation.

    Items are dicts: `pixel_values` (3, H, W) tensor, `pid` and `camid` (0-based) ints, and `index`, the
    row in the split (for the train split, the exemplar-memory slot).
    """

    def __init__(self, split: Any, transform: Transform, *, preload: bool = False) -> None:
        """
        Args:
            split: a `datasets.Dataset` with columns image, path, pid and camid.
            transform: PIL image -> (3, H, W) tensor, e.g. from `build_transform`.
            preload: decode and transform every image now and keep the tensors (N x 3 x H x W of the transform's
                dtype: uint8 for training, 98 KB per image at 256x128).
        """
        self.split = split
        self.transform = transform
        self.paths: list[str] = column_values(split, "path")
        self.pids: list[int] = column_values(split, "pid")
        self.camids: list[int] = column_values(split, "camid")
        self._stored_rows = split.with_format("arrow") if stores_image_bytes(split) else None
        self._pixels = None
        if preload and len(self.paths):
            rows = tqdm(range(len(self.paths)), desc="decode images", leave=False, mininterval=1.0)
            self._pixels = torch.stack([self._load(i) for i in rows])  # (N, 3, H, W)

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> PIL.Image.Image:
        """Row `index`'s image, decoded from the bytes the split stores or else from its file."""
        if self._stored_rows is not None:
            return decode_stored_image(self._stored_rows, index)
        return decode_image(self.paths[index])

    def _load(self, index: int) -> torch.Tensor:
        return self.transform(self.image(index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        pixel_values = self._pixels[index] if self._pixels is not None else self._load(index)
        return {"pixel_values": pixel_values, "pid": self.pids[index], "camid": self.camids[index], "index": index}


class CrossDomainDataset(Dataset):
    """The labelled source and unlabelled target training splits behind one index space.

    Indices `[0, len(source))` are source images and `[len(source), len(source) + len(target))` target images,
    which is what `CrossDomainBatchSampler` draws from. Items are dicts:

    - `pixel_values`: (3, H, W) float tensor.
    - `pid`: source: the label 0..C-1 (original pids relabelled in sorted order); target: -1 (unknown).
    - `camid`: target: its 0-based camera; source: camera + `num_target_cameras`, so the two domains never
      share a camera id (as in the original code).
    - `index`: target: its slot in the target train split (the exemplar-memory slot); source: -1.
    - `domain`: 0 source, 1 target.

    With `target=None` (single-domain training) only the source part exists and camera ids are not offset.
    """

    def __init__(self, source: Any, target: Any | None, transform: Transform, *, preload: bool = False) -> None:
        """
        Args:
            source: the source benchmark's train split (`datasets.Dataset`).
            target: the target benchmark's train split, or None.
            transform: applied to both domains.
            preload: decode every image once and keep it in memory (`ReIDImageDataset`).
        """
        self.source = source
        self.target = target
        self._source = ReIDImageDataset(source, transform, preload=preload)
        self._target = ReIDImageDataset(target, transform, preload=preload) if target is not None else None
        self.source_pids: list[int] = sorted(set(self._source.pids))  # original pid of each label
        self._labels = {pid: label for label, pid in enumerate(self.source_pids)}
        camids = self._target.camids if self._target is not None else []
        self.target_camids = torch.tensor(camids, dtype=torch.long)  # (N_target,) camera of each memory slot
        # (N_target,) true identity of each memory slot: training never sees it, diagnostics compare against it
        self.target_pids = torch.tensor(self._target.pids if self._target is not None else [], dtype=torch.long)
        self.num_target_cameras = int(self.target_camids.max()) + 1 if camids else 0

    @property
    def num_source_classes(self) -> int:
        return len(self.source_pids)

    def __len__(self) -> int:
        return len(self._source) + (len(self._target) if self._target is not None else 0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is outside [0, {len(self)})")
        if index < len(self._source):
            item = self._source[index]
            item.update(
                pid=self._labels[item["pid"]], camid=item["camid"] + self.num_target_cameras, index=-1, domain=0
            )
        else:
            item = self._target[index - len(self._source)]
            item.update(pid=-1, domain=1)
        return item
