"""A searchable gallery: build it once from crops (or features), grow it, save it, and ask "where else is this person".

    gallery = GalleryIndex.from_images(encoder, "crops/", pattern=r"cam(?P<camera>\\d+)/(?P<frame>\\d+)")
    gallery.save("week1.gallery")
    gallery = GalleryIndex.load("week1.gallery")
    hits = gallery.search_images(encoder, ["suspect.jpg"], k=20, exclude_same_camera=True)
    hits.rows()                                                            # one dict per (query, rank)

Each row keeps where it came from: ``path``, and when known ``person``, ``camera``, ``frame`` and ``time`` (read
from the path with a regular expression whose named groups are those fields, or given as lists). Search is exact
by default: cosine similarity of the L2-normalised features through `reid_accel.metrics.product.similarity` (the
faster CPU matmul), in blocks of the gallery, top-k with equal scores ordered by row. Past a few million rows, an
approximate faiss index (``pip install 'reid-accel[search]'``; HNSW or IVF) answers faster at a measured recall
(BENCHMARKS.md).

Exclusions: ``exclude_same_camera`` drops the query's own camera; ``window`` drops rows of the query's camera whose
``time`` lies within ``window`` of the query's (the same walk past the same camera), keeping other cameras.

The saved index is a folder: ``index.json`` (format version, the model's identity, the feature dimension, the
pattern, and the names of the current files), ``vectors-<n>.safetensors`` (the (N, D) float32 features),
``rows-<n>.parquet`` (the rows' sources) and, with an approximate index, ``faiss-<n>.index``. Saving writes the new
generation's files, then ``index.json`` atomically, then removes the old generation: a crash at any point leaves
an index that loads. The model's identity is a digest of the encoder's config and weights; a query embedded by
another model is refused.
"""

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from reid_accel.errors import InputError
from reid_accel.fileio import atomic_path, write_json_atomic
from reid_accel.gallery.rows import FIELDS, Rows, check_pattern
from reid_accel.gallery.topk import Excluder, exact_order, finish_top_k, merge_top_k, top_k
from reid_accel.inference import ImageLike, as_image_list, embed_images
from reid_accel.metrics.product import similarity
from reid_accel.metrics.ranking import unit_rows
from reid_accel.modeling import ReIDEncoder

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INFO_NAME = "index.json"
Approximate = Literal["hnsw", "ivf"]
APPROXIMATE_KINDS: tuple[str, ...] = ("hnsw", "ivf")
# Scores per exact-search block (128 MB in float32): bounds memory for any batch and gallery size. A block takes up
# to 512 queries, so that a large gallery is read from memory once per 512 queries rather than once per few rows
# (1M x 512-d: 2 GB per read).
_BLOCK_ENTRIES = 1 << 25
_BLOCK_QUERIES = 512
# Approximate search fetches this many times k before exclusions, doubling while too few rows survive.
_OVERFETCH = 4
_HNSW_NEIGHBOURS, _HNSW_EF_SEARCH, _HNSW_EF_CONSTRUCTION = 32, 128, 80
_IVF_PROBES = 16


def model_identity(encoder: ReIDEncoder) -> str:
    """A digest of the encoder's config and weights: two encoders share it only if they compute the same features."""
    digest = hashlib.sha256(json.dumps(encoder.export_config(), sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()[:32]}"


@dataclasses.dataclass(frozen=True)
class SearchResults:
    """Top-k rows per query. ``indices`` (n, k) int64 gallery rows best first, -1 past the end of what is left;
    ``scores`` (n, k) float32 cosine similarities (-inf where the index is -1); ``gallery_rows`` the gallery's sources;
    ``queries`` (n,) the queries' names."""

    indices: np.ndarray
    scores: np.ndarray
    gallery_rows: Rows
    queries: list[str]

    def rows(self) -> list[dict]:
        """One dict per found item: query, rank (1-based), score, row and the row's source fields."""
        table = []
        for q, query in enumerate(self.queries):
            for rank, (index, score) in enumerate(zip(self.indices[q], self.scores[q], strict=True), start=1):
                if index < 0:
                    break
                source = {name: getattr(self.gallery_rows, name)[index] for name in ("path", *FIELDS)}
                table.append({"query": query, "rank": rank, "score": float(score), "row": int(index)} | source)
        return table

    def write_csv(self, path: str | os.PathLike) -> Path:
        """The table of `rows` as CSV, written atomically."""
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["query", "rank", "score", "row", "path", *FIELDS])
            writer.writeheader()
            writer.writerows(self.rows())
        return Path(path)


class GalleryIndex:
    """L2-normalised features of gallery crops with their sources, searched exactly or through faiss."""

    def __init__(self, features: torch.Tensor, rows: Rows, *, model_id: str | None, pattern: str | None = None):
        if features.ndim != 2 or features.shape[1] < 1:
            raise InputError(f"gallery features have shape {tuple(features.shape)}; expected (num_items, dim)")
        if len(rows) != len(features):
            raise InputError(f"{len(features)} gallery features but {len(rows)} rows; expected one row each")
        self.features = unit_rows(features, "gallery features")
        self.rows = rows
        self.model_id = model_id
        self.pattern = pattern
        self.approximate: Approximate | None = None
        self._faiss = None
        self._camera_codes: tuple[dict[str, int], np.ndarray] | None = None
        self._times: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def __len__(self) -> int:
        return len(self.features)

    @classmethod
    def from_features(
        cls,
        features: np.ndarray | torch.Tensor,
        *,
        paths: Sequence[str] | None = None,
        persons: Sequence | None = None,
        cameras: Sequence | None = None,
        frames: Sequence | None = None,
        times: Sequence | None = None,
        pattern: str | None = None,
        model_id: str | None = None,
    ) -> "GalleryIndex":
        """An index over (N, D) features, e.g. from `embed_images` or a features file, with their sources.

        ``model_id`` (`model_identity` of the encoder that made them) lets the index refuse another model's
        queries; without it only the dimension is checked.
        """
        features = _as_features(features, "gallery features")
        fields = {"persons": persons, "cameras": cameras, "frames": frames, "times": times}
        rows = Rows.build(len(features), paths=paths, pattern=check_pattern(pattern), **fields)
        return cls(features, rows, model_id=model_id, pattern=pattern)

    @classmethod
    def from_images(
        cls,
        encoder: ReIDEncoder,
        images: ImageLike | Sequence[ImageLike],
        *,
        pattern: str | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> "GalleryIndex":
        """An index over person crops (a folder, files, arrays: anything `embed_images` reads) embedded by ``encoder``.

        Files keep their path; ``pattern`` (a regular expression with named groups among ``person``, ``camera``,
        ``frame``, ``time``) reads the other fields from it, e.g. ``r"(?P<person>\\d+)_c(?P<camera>\\d+)"``.
        """
        items, paths = _items_and_paths(images)
        check_pattern(pattern)
        features = embed_images(encoder, items, batch_size=batch_size, device=device, progress=progress)
        index = cls.from_features(features.cpu(), paths=paths, pattern=pattern, model_id=model_identity(encoder))
        logger.info("Gallery of %d crops, %d-d features", len(index), index.dim)
        return index

    def add(self, other: "GalleryIndex") -> None:
        """Append another index's rows (same model, same dimension); an approximate index takes them in too."""
        self._check_compatible(other.dim, other.model_id, what="the added rows")
        added = other.features
        self.features = torch.cat([self.features, added])
        self.rows.extend(other.rows)
        self._camera_codes = self._times = None
        if self._faiss is not None:
            self._faiss.add(added.numpy())
        logger.info("Gallery now holds %d rows", len(self))

    def build_approximate(
        self, kind: Approximate = "hnsw", *, lists: int | None = None, depth: int | None = None
    ) -> None:
        """Build a faiss index over the rows (inner product = cosine on these unit rows).

        Args:
            kind: ``"hnsw"`` (graph, 32 neighbours, no training) or ``"ivf"`` (inverted lists, trained by k-means
                on the rows, ``_IVF_PROBES`` lists probed per query).
            lists: IVF lists; default ``4 * sqrt(N)``.
            depth: how hard each query searches, trading speed for recall: HNSW's ``efSearch`` (default
                ``_HNSW_EF_SEARCH``) or the IVF lists probed (default ``_IVF_PROBES``). Saved with the index.
        """
        faiss = _faiss()
        if kind not in APPROXIMATE_KINDS:
            raise InputError(f"approximate index {kind!r}; expected one of {', '.join(APPROXIMATE_KINDS)}")
        _require_rows(self)
        vectors = self.features.numpy()
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, _HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = _HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = depth or _HNSW_EF_SEARCH
        else:
            lists = lists or max(1, min(len(self) // 39, int(4 * math.sqrt(len(self)))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, lists, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            index.nprobe = min(depth or _IVF_PROBES, lists)
        index.add(vectors)
        self._faiss, self.approximate = index, kind

    def search(
        self,
        queries: np.ndarray | torch.Tensor,
        k: int = 10,
        *,
        model_id: str | None = None,
        cameras: Sequence | None = None,
        times: Sequence | None = None,
        exclude_same_camera: bool = False,
        window: float | None = None,
        approximate: bool = False,
        depth: int | None = None,
        names: Sequence[str] | None = None,
    ) -> SearchResults:
        """Top-k gallery rows of each query feature.

        Args:
            queries: (n, D) or (D,) features (normalised here).
            k: results per query, at most the gallery's rows; fewer rows left after the exclusions pads with -1.
            model_id: the identity of the model that embedded the queries; refused if the index records another.
            cameras: (n,) the queries' cameras (for the exclusions); None where unknown.
            times: (n,) the queries' times, in the unit of the gallery's ``time`` column.
            exclude_same_camera: drop rows of the query's camera.
            window: drop rows of the query's camera within this time of the query.
            approximate: use the faiss index (`build_approximate`) instead of the exact product.
            depth: for this search, HNSW's ``efSearch`` or the IVF lists probed (default: the index's own).
            names: (n,) how the result table names each query; default ``query <i>``.

        Returns:
            `SearchResults`.
        """
        query = _as_features(queries, "query features")
        query = query[None] if query.ndim == 1 else query
        self._check_compatible(query.shape[1], model_id, what="the query")
        _require_rows(self)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k={k!r}; expected a positive whole number")
        if k > len(self):
            raise InputError(f"k={k} is larger than the gallery ({len(self)} rows); ask for at most {len(self)}")
        if window is not None and not (window >= 0):
            raise InputError(f"window={window!r}; expected a time span >= 0")
        query = unit_rows(query, "query features")
        excluder = Excluder.build(
            len(query),
            cameras,
            times,
            exclude_same_camera,
            window,
            camera_codes=self._cameras,
            row_times=self._row_times,
        )
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise InputError(f"depth={depth!r}; expected a positive whole number")
        if approximate:
            if self._faiss is None:
                raise InputError("this gallery has no approximate index; build one with build_approximate()")
            indices, scores = self._search_faiss(query, k, excluder, depth)
        else:
            indices, scores = self._search_exact(query, k, excluder)
        names = list(names) if names is not None else [f"query {i}" for i in range(len(query))]
        return SearchResults(indices, scores, self.rows, names)

    def search_images(
        self,
        encoder: ReIDEncoder,
        images: ImageLike | Sequence[ImageLike],
        k: int = 10,
        *,
        cameras: Sequence | None = None,
        times: Sequence | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        **options,
    ) -> SearchResults:
        """`search` with query crops embedded by ``encoder``, which must be the gallery's model.

        The queries' cameras and times come from their paths through the gallery's pattern unless given.
        """
        self._check_compatible(encoder.feature_dim, model_identity(encoder), what="the query")
        items, paths = _items_and_paths(images)
        parsed = Rows.build(len(items), paths=paths, pattern=self.pattern, cameras=cameras, times=times)
        features = embed_images(encoder, items, batch_size=batch_size, device=device).cpu()
        return self.search(
            features, k, cameras=parsed.camera, times=parsed.time, names=parsed.path, model_id=None, **options
        )

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index to ``folder`` (created, or an index folder to replace); see the module docstring."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder}: exists and is not a folder")
        old = _read_info(folder) if (folder / INFO_NAME).is_file() else None
        if old is None and folder.is_dir() and any(folder.iterdir()):
            raise InputError(f"{folder}: a folder that is not a gallery index; refusing to write into it")
        generation = old["generation"] + 1 if old else 1
        files = {"vectors": f"vectors-{generation}.safetensors", "rows": f"rows-{generation}.parquet"}
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / files["vectors"]) as tmp:
            save_file({"features": self.features.contiguous()}, tmp)
        import pyarrow.parquet as pq

        with atomic_path(folder / files["rows"]) as tmp:
            pq.write_table(self.rows.to_arrow(), tmp)
        if self._faiss is not None:
            files["faiss"] = f"faiss-{generation}.index"
            with atomic_path(folder / files["faiss"]) as tmp:
                _faiss().write_index(self._faiss, str(tmp))
        info = {
            "format": "reid-accel gallery",
            "version": FORMAT_VERSION,
            "model_id": self.model_id,
            "dim": self.dim,
            "count": len(self),
            "pattern": self.pattern,
            "approximate": self.approximate,
            "generation": generation,
            "files": files,
        }
        write_json_atomic(folder / INFO_NAME, info)
        for name in set(old["files"].values()) - set(files.values()) if old else ():
            (folder / name).unlink(missing_ok=True)
        logger.info("Saved a gallery of %d rows to %s", len(self), folder)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "GalleryIndex":
        """Read an index folder written by `save`; any missing, foreign or damaged part is refused in one line."""
        folder = Path(folder)
        if not (folder / INFO_NAME).is_file():
            raise InputError(f"{folder}: not a gallery index (no {INFO_NAME})")
        info = _read_info(folder)
        vectors = folder / info["files"]["vectors"]
        try:
            features = load_file(vectors)["features"]
        except (SafetensorError, OSError, KeyError) as error:
            raise InputError(f"{vectors}: unreadable gallery vectors ({error})") from None
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows_file = folder / info["files"]["rows"]
        try:
            rows = Rows.from_arrow(pq.read_table(rows_file))
        except (pa.ArrowException, OSError, KeyError) as error:
            raise InputError(f"{rows_file}: unreadable gallery rows ({error})") from None
        if features.shape != (info["count"], info["dim"]) or len(rows) != info["count"]:
            raise InputError(
                f"{folder}: {INFO_NAME} records {info['count']} x {info['dim']} but the files hold "
                f"{tuple(features.shape)} features and {len(rows)} rows"
            )
        index = cls(features, rows, model_id=info["model_id"], pattern=info["pattern"])
        if "faiss" in info["files"]:
            faiss_file = folder / info["files"]["faiss"]
            try:
                index._faiss = _faiss().read_index(str(faiss_file))
            except RuntimeError as error:
                raise InputError(
                    f"{faiss_file}: unreadable approximate index ({str(error).splitlines()[0]})"
                ) from None
            if index._faiss.ntotal != len(index):
                raise InputError(f"{faiss_file}: holds {index._faiss.ntotal} rows; expected {len(index)}")
            index.approximate = info["approximate"]
        return index

    def plot(self, results: SearchResults, query_images: Sequence, path: str | os.PathLike, *, top_k: int = 10):
        """The rank-list picture: each query beside its top-k crops (green: same person, red: another, grey:
        unknown), with camera and score under each crop. Needs the gallery's crops at their recorded paths."""
        from reid_accel.metrics.visualize import plot_rank_list

        top_k = min(top_k, results.indices.shape[1])
        ranked = results.indices[:, :top_k]
        shown = {int(i): self.rows.path[i] for i in ranked.flat if i >= 0}
        missing = [p for p in shown.values() if not Path(p).is_file()]
        if missing:
            raise InputError(f"{missing[0]}: gallery crop not found; the picture needs the crops where they were")
        query_persons = Rows.build(len(query_images), paths=[str(q) for q in query_images], pattern=self.pattern)
        matches = None
        if any(p is not None for p in query_persons.person):
            matches = np.array(
                [
                    [i >= 0 and person is not None and self.rows.person[i] == person for i in row]
                    for row, person in zip(ranked, query_persons.person, strict=True)
                ]
            )
        cameras = {i: self.rows.camera[i] or "?" for i in shown}
        return plot_rank_list(
            list(query_images),
            shown,
            ranked,
            matches,
            [c or "?" for c in query_persons.camera],
            cameras,
            path,
            num_queries=len(query_images),
            top_k=top_k,
            scores=results.scores[:, :top_k],
        )

    def _check_compatible(self, dim: int, model_id: str | None, *, what: str) -> None:
        if dim != self.dim:
            raise InputError(f"{what} has {dim}-d features but this gallery holds {self.dim}-d features")
        if model_id is not None and self.model_id is not None and model_id != self.model_id:
            raise InputError(
                f"{what} comes from model {model_id} but this gallery was built by model {self.model_id}; "
                "features of different models cannot be compared"
            )

    def _cameras(self) -> tuple[dict[str, int], np.ndarray]:
        """Each camera's code (sorted names) and the (N,) int64 code of each row, -1 where unknown; cached."""
        if self._camera_codes is None:
            table = {c: i for i, c in enumerate(sorted({c for c in self.rows.camera if c is not None}))}
            self._camera_codes = (table, np.array([table.get(c, -1) for c in self.rows.camera], dtype=np.int64))
        return self._camera_codes

    def _row_times(self) -> np.ndarray:
        """(N,) float64 time of each row, NaN where unknown; cached."""
        if self._times is None:
            self._times = np.array([math.nan if t is None else t for t in self.rows.time], dtype=np.float64)
        return self._times

    def _search_exact(self, query: torch.Tensor, k: int, excluder: "Excluder") -> tuple[np.ndarray, np.ndarray]:
        """Blocks of (queries x gallery columns) scores, each block's exact top-k merged into a running top-k."""
        num_query = len(query)
        best_scores = torch.full((num_query, 0), -math.inf)
        best_indices = torch.zeros((num_query, 0), dtype=torch.int64)
        rows_per_block = max(1, min(num_query, _BLOCK_QUERIES, _BLOCK_ENTRIES))
        cols_per_block = max(1, _BLOCK_ENTRIES // rows_per_block)
        out_scores, out_indices = [], []
        for q0 in range(0, num_query, rows_per_block):
            q1 = min(q0 + rows_per_block, num_query)
            scores_q, indices_q = best_scores[q0:q1], best_indices[q0:q1]
            for g0 in range(0, len(self), cols_per_block):
                g1 = min(g0 + cols_per_block, len(self))
                block = similarity(query[q0:q1], self.features[g0:g1])  # (c, g)
                excluder.apply(block, q0, q1, g0, g1)
                block_scores, block_indices = top_k(block, k)
                scores_q, indices_q = merge_top_k(scores_q, indices_q, block_scores, block_indices + g0, k)
            out_scores.append(scores_q)
            out_indices.append(indices_q)
        return finish_top_k(torch.cat(out_indices), torch.cat(out_scores), k)

    def _search_faiss(
        self, query: torch.Tensor, k: int, excluder: "Excluder", depth: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """faiss's top candidates, over-fetched and doubled until k survive the exclusions (or the gallery ends)."""
        fetch = min(len(self), k * (_OVERFETCH if excluder.active else 1))
        params = None
        if depth is not None:
            faiss = _faiss()
            hnsw = self.approximate == "hnsw"
            params = faiss.SearchParametersHNSW(efSearch=depth) if hnsw else faiss.SearchParametersIVF(nprobe=depth)
        while True:
            scores, indices = self._faiss.search(query.numpy(), fetch, params=params)  # (n, fetch), -1: none
            scores, indices = torch.from_numpy(scores), torch.from_numpy(indices)
            scores = scores.masked_fill(indices < 0, -math.inf)
            excluder.apply_to_pairs(scores, indices)
            enough = bool(((scores > -math.inf).sum(1) >= min(k, len(self))).all())
            if enough or fetch >= len(self):
                return finish_top_k(*exact_order(indices, scores, k), k)
            fetch = min(len(self), fetch * 2)


def _faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "approximate search needs faiss; install it with: pip install 'reid-accel[search]'"
        ) from error
    return faiss


def _require_rows(index: GalleryIndex) -> None:
    if len(index) == 0:
        raise InputError("the gallery is empty; add crops before searching it")


def _items_and_paths(images: ImageLike | Sequence[ImageLike]) -> tuple[list, list[str]]:
    items = as_image_list(images)
    return items, [str(item) if isinstance(item, str | os.PathLike) else "" for item in items]


def _as_features(values, name: str) -> torch.Tensor:
    tensor = values.detach().cpu() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if tensor.ndim not in (1, 2) or not (tensor.is_floating_point()):
        raise InputError(f"{name} have shape {tuple(tensor.shape)} and dtype {tensor.dtype}; expected (n, dim) floats")
    return tensor.float()


def _read_info(folder: Path) -> dict:
    path = folder / INFO_NAME
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: unreadable gallery index ({error})") from None
    if not isinstance(info, dict) or info.get("format") != "reid-accel gallery":
        raise InputError(f"{path}: not a reid-accel gallery index")
    if info.get("version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: gallery format version {info.get('version')!r}; this reid-accel reads {FORMAT_VERSION}"
        )
    needed = {"model_id", "dim", "count", "pattern", "approximate", "generation", "files"}
    if not needed <= set(info) or not {"vectors", "rows"} <= set(info["files"]):
        raise InputError(f"{path}: gallery index lacks {sorted(needed - set(info)) or 'its file names'}")
    return info
