"""Exact top-k over blocks of scores, with the exclusions a search asks for, equal scores ordered by row."""

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch

from reid_accel.errors import InputError
from reid_accel.gallery.rows import field_value


@dataclasses.dataclass(frozen=True)
class Excluder:
    """Which (query, row) pairs a search drops: the query's camera, or its camera within a time window."""

    active: bool
    query_cameras: torch.Tensor  # (n,) int64 codes, -1 unknown
    query_times: torch.Tensor  # (n,) float64, NaN unknown
    row_cameras: torch.Tensor  # (N,)
    row_times: torch.Tensor  # (N,)
    same_camera: bool
    window: float | None

    @classmethod
    def build(
        cls,
        num_query: int,
        cameras,
        times,
        same_camera: bool,
        window,
        *,
        camera_codes: Callable[[], tuple[dict[str, int], np.ndarray]],
        row_times: Callable[[], np.ndarray],
    ) -> "Excluder":
        """The exclusions of a search of `num_query` queries; `camera_codes` and `row_times` give the gallery's
        camera table and per-row codes and times, asked for only when an exclusion needs them."""
        active = same_camera or window is not None
        if active and cameras is None:
            raise InputError("excluding the query's camera or a time window needs the queries' cameras")
        if window is not None and times is None:
            raise InputError("a time window needs the queries' times")
        table, codes = camera_codes() if active else ({}, np.zeros(0, dtype=np.int64))
        query_cameras = [field_value("camera", c) for c in cameras] if cameras is not None else [None] * num_query
        query_times = [field_value("time", t) for t in times] if times is not None else [None] * num_query
        for name, values in (("cameras", query_cameras), ("times", query_times)):
            if len(values) != num_query:
                raise InputError(f"{name}: {len(values)} values for {num_query} queries; expected one each")
        needed = [("camera", query_cameras)] if active else []
        needed += [("time", query_times)] if window is not None else []
        for name, values in needed:
            if None in values:
                raise InputError(f"query {values.index(None)} has no {name}; the exclusions need every query's {name}")
        return cls(
            active,
            torch.tensor([table.get(c, -2) if c is not None else -1 for c in query_cameras], dtype=torch.int64),
            torch.tensor([math.nan if t is None else t for t in query_times], dtype=torch.float64),
            torch.from_numpy(codes),
            torch.from_numpy(row_times()) if window is not None else torch.zeros(0, dtype=torch.float64),
            same_camera,
            window,
        )

    def _dropped(self, query_cameras, query_times, row_cameras, row_times) -> torch.Tensor:
        same = (query_cameras == row_cameras) & (row_cameras >= 0)
        if self.same_camera:
            return same
        return same & ((row_times - query_times).abs() <= self.window)  # NaN times compare False: kept

    def apply(self, block: torch.Tensor, q0: int, q1: int, g0: int, g1: int) -> None:
        """Set the dropped pairs of a (queries q0..q1) x (rows g0..g1) block to -inf, in place."""
        if not self.active:
            return
        dropped = self._dropped(
            self.query_cameras[q0:q1, None],
            self.query_times[q0:q1, None],
            self.row_cameras[None, g0:g1],
            self.row_times[None, g0:g1] if self.window is not None else None,
        )
        block.masked_fill_(dropped, -math.inf)

    def apply_to_pairs(self, scores: torch.Tensor, indices: torch.Tensor) -> None:
        """Set the dropped (query, row) pairs of (n, m) candidate lists to -inf, in place."""
        if not self.active:
            return
        rows = indices.clamp(min=0)
        dropped = self._dropped(
            self.query_cameras[:, None],
            self.query_times[:, None],
            self.row_cameras[rows],
            self.row_times[rows] if self.window is not None else None,
        )
        scores.masked_fill_(dropped, -math.inf)


def top_k(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, k') best scores of each row and their columns, equal scores by lowest column, exactly (k' = min(k, g))."""
    take = min(k, block.shape[1])
    values, columns = torch.topk(block, take, dim=1, sorted=True)  # (c, k')
    # topk may cut a run of equal scores anywhere: rows holding more entries at their k-th value than it kept are
    # redone exactly (numpy counts a boolean row ~20x faster than torch sums one).
    at_least = np.count_nonzero(block.numpy() >= values[:, -1:].numpy(), axis=1)
    for row in np.flatnonzero(at_least > take).tolist():
        candidates = (block[row] >= values[row, -1]).nonzero().flatten()
        order = exact_order(candidates[None], block[row, candidates][None], take)[0]
        columns[row] = order[0]
        values[row] = block[row, order[0]]
    return values, columns


def exact_order(indices: torch.Tensor, scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (index, score) pairs of each row: score descending, then index ascending; -1 indices last."""
    keyed = torch.where(indices < 0, torch.iinfo(torch.int64).max, indices)
    by_index = torch.argsort(keyed, dim=1, stable=True)
    by_score = torch.sort(scores.gather(1, by_index), dim=1, descending=True, stable=True).indices
    order = by_index.gather(1, by_score)[:, :k]
    return indices.gather(1, order), scores.gather(1, order)


def merge_top_k(scores_a, indices_a, scores_b, indices_b, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two running top-k lists (scores, indices) merged into one, in the exact order."""
    indices, scores = exact_order(torch.cat([indices_a, indices_b], 1), torch.cat([scores_a, scores_b], 1), k)
    return scores, indices


def finish_top_k(indices: torch.Tensor, scores: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) int64 indices and float32 scores, -1 / -inf where the row ran out of allowed gallery rows."""
    out_indices = np.full((len(indices), k), -1, dtype=np.int64)
    out_scores = np.full((len(indices), k), -np.inf, dtype=np.float32)
    width = min(k, indices.shape[1])
    valid = scores[:, :width] > -math.inf
    out_indices[:, :width] = torch.where(valid, indices[:, :width], -1).numpy()
    out_scores[:, :width] = torch.where(valid, scores[:, :width].float(), -math.inf).numpy()
    return out_indices, out_scores
