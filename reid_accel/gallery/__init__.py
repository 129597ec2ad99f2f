"""A searchable gallery of person crops: `GalleryIndex` (index.py), the rows' sources (rows.py), exact top-k with
exclusions (topk.py)."""

from reid_accel.gallery.index import GalleryIndex, SearchResults, model_identity
from reid_accel.gallery.rows import FIELDS, Rows, check_pattern

__all__ = ["FIELDS", "GalleryIndex", "Rows", "SearchResults", "check_pattern", "model_identity"]
