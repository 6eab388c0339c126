"""Corpora: the bundled UDHR (offline) and loaders for FLORES+, Belebele and MGSM (hub or local copy)."""

from ._hub import BelebeleItem, MGSMItem, belebele, belebele_items, flores, mgsm, mgsm_items
from .reference import reference_stats
from ._udhr import udhr, udhr_languages, udhr_segments, udhr_statistics

__all__ = [
    "BelebeleItem", "MGSMItem", "belebele", "belebele_items", "flores", "mgsm", "mgsm_items", "reference_stats",
    "udhr", "udhr_languages", "udhr_segments", "udhr_statistics",
]
