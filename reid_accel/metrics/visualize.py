"""Pictures of a ranking: the CMC curve and rank lists (query + top-k gallery, green = same id, red = other).

matplotlib is optional (``pip install 'reid-accel[viz]'``) and imported only here, inside the functions. Figures are
drawn on the Agg canvas directly (no pyplot, no global backend switch) and written atomically
(`reid_accel.fileio.atomic_path`). Rank lists come from `reid_accel.metrics.top_k_gallery`.
"""

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import PIL.Image

from reid_accel.errors import ReidAccelError
from reid_accel.fileio import atomic_path

logger = logging.getLogger(__name__)

# Rank-list cell: re-ID crops are 1:2 (width:height); shown at 64 x 128 pixels each.
_CELL_PIXELS = (64, 128)
_RIGHT, _WRONG, _QUERY, _UNKNOWN = "#1a9850", "#d73027", "#2c7bb6", "#969696"
ImageSource = str | Path | PIL.Image.Image


def plot_cmc(cmc: Sequence[float] | np.ndarray, path: str | Path, *, title: str = "CMC curve") -> Path:
    """Plots the CMC curve (hit rate at rank 1..len(cmc)) to a PNG file.

    Args:
        cmc: (R,) fractions in [0, 1], e.g. ``rank_metrics(...)["cmc"]``.
        path: PNG file to write (its folder is created).
        title: figure title.

    Returns:
        The written path.
    """
    curve = np.asarray(cmc, dtype=np.float64)
    if curve.ndim != 1 or len(curve) == 0:
        raise ReidAccelError(f"cmc has shape {curve.shape}; expected a non-empty 1-D array")
    if not np.all((curve >= 0) & (curve <= 1)):
        raise ReidAccelError(f"cmc spans [{curve.min():.3g}, {curve.max():.3g}]; expected fractions in [0, 1]")
    figure_cls, canvas_cls = _matplotlib("plot_cmc")
    fig = figure_cls(figsize=(6.0, 4.0), dpi=100)
    canvas_cls(fig)
    ax = fig.add_subplot()
    ranks = np.arange(1, len(curve) + 1)
    ax.plot(ranks, 100 * curve, color=_QUERY, marker="o", markersize=3, linewidth=1.5)
    marked = [rank for rank in (1, 5, 10) if rank <= len(curve)]
    ax.plot(marked, [100 * curve[rank - 1] for rank in marked], linestyle="none", marker="o", color=_RIGHT)
    summary = "\n".join(f"rank-{rank}: {100 * curve[rank - 1]:.1f}%" for rank in marked)
    ax.text(
        0.97,
        0.05,
        summary,
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        family="monospace",
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7"},
    )
    ax.set_xlim(0.5, len(curve) + 0.5)
    ax.set_ylim(0, 100)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_rank_list(
    query_images: Sequence[ImageSource],
    gallery_images: Sequence[ImageSource] | Mapping[int, ImageSource],
    ranked_indices: np.ndarray,
    matches: np.ndarray | None,
    query_camids: Sequence[int | str],
    gallery_camids: Sequence[int | str] | Mapping[int, int | str],
    path: str | Path,
    *,
    num_queries: int = 4,
    top_k: int = 10,
    scores: np.ndarray | None = None,
) -> Path:
    """Draws one row per query: the query image, then its top-k gallery images framed green (same id) or red
    (grey where the ids are unknown).

    Images are files or PIL images (a split that stores its images has no files to read).

    Args:
        query_images: (n,) the ranked queries (row i of ``ranked_indices`` belongs to query i).
        gallery_images: the gallery by index: every image, or a mapping holding at least the ranked ones.
        ranked_indices: (n, >= top_k) gallery indices, best first; -1 leaves a cell empty (see `top_k_gallery`).
        matches: (n, >= top_k) bool, True where the gallery item has the query's id; None: ids unknown.
        query_camids: (n,) camera ids of the queries, shown under each image.
        gallery_camids: (G,) camera ids of the gallery, or a mapping holding at least the ranked ones.
        path: PNG file to write (its folder is created).
        num_queries: rows drawn (the first ones).
        top_k: gallery images per row.
        scores: (n, >= top_k) similarities, shown under each gallery image when given.

    Returns:
        The written path.
    """
    ranked = np.asarray(ranked_indices)
    hits = np.asarray(matches, dtype=bool) if matches is not None else None
    shape = hits.shape if hits is not None else ranked.shape
    rows = min(num_queries, len(query_images))
    if ranked.ndim != 2 or ranked.shape != shape or len(ranked) < rows or ranked.shape[1] < top_k:
        raise ReidAccelError(
            f"ranked_indices {ranked.shape} / matches {shape}; expected equal shapes (n, >= {top_k}) with n >= {rows}"
        )
    if len(query_camids) != len(query_images):
        raise ReidAccelError(f"{len(query_images)} query images / {len(query_camids)} query camids; expected equal")
    drawn = {int(i) for i in ranked[:rows, :top_k].flat if i >= 0}
    with_image = gallery_images.keys() if isinstance(gallery_images, Mapping) else range(len(gallery_images))
    with_camid = gallery_camids.keys() if isinstance(gallery_camids, Mapping) else range(len(gallery_camids))
    lacking = sorted(i for i in drawn if i not in with_image or i not in with_camid)
    if lacking:
        raise ReidAccelError(f"ranked gallery items {lacking[:5]} have no image or no camid")
    if rows < 1 or top_k < 1:
        raise ReidAccelError(
            f"num_queries={num_queries}, top_k={top_k} with {len(query_images)} queries; expected >= 1"
        )
    figure_cls, canvas_cls = _matplotlib("plot_rank_list")
    cell_w, cell_h = 0.85, 1.95 + (0.15 if scores is not None else 0.0)  # inches per column / row, labels included
    height = cell_h * rows + 0.2
    fig = figure_cls(figsize=(cell_w * (top_k + 1.4), height), dpi=100)
    canvas_cls(fig)
    grid = fig.add_gridspec(rows, top_k + 2, width_ratios=[1, 0.4] + [1] * top_k, wspace=0.08, hspace=0.35)
    for row in range(rows):
        _image_cell(fig.add_subplot(grid[row, 0]), query_images[row], _QUERY, f"query\ncam {query_camids[row]}")
        for rank in range(top_k):
            ax = fig.add_subplot(grid[row, rank + 2])
            index = int(ranked[row, rank])
            if index < 0:
                ax.set_axis_off()
                continue
            color = _UNKNOWN if hits is None else _RIGHT if hits[row, rank] else _WRONG
            label = f"#{rank + 1}\ncam {gallery_camids[index]}"
            if scores is not None:
                label += f"\n{scores[row, rank]:.3f}"
            _image_cell(ax, gallery_images[index], color, label)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.1 / height, bottom=0.45 / height)
    return _save(fig, path)


def _image_cell(ax, source: ImageSource, color: str, label: str) -> None:
    """One image, resized to the cell, framed in ``color`` with ``label`` under it."""
    if isinstance(source, PIL.Image.Image):
        pixels = np.asarray(source.convert("RGB").resize(_CELL_PIXELS, PIL.Image.Resampling.BILINEAR))
    else:
        try:
            with PIL.Image.open(source) as image:
                pixels = np.asarray(image.convert("RGB").resize(_CELL_PIXELS, PIL.Image.Resampling.BILINEAR))
        except OSError as error:
            raise ReidAccelError(f"cannot read image {source}: {error}") from error
    ax.imshow(pixels)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(4)
    ax.set_xlabel(label, fontsize=8, color=color, labelpad=2, linespacing=1.1)


def _matplotlib(caller: str):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"{caller} needs matplotlib; install it with: pip install 'reid-accel[viz]'") from error
    return Figure, FigureCanvasAgg


def _save(fig, path: str | Path) -> Path:
    """Writes ``fig`` as PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    logger.info("wrote %s", path)
    return path
