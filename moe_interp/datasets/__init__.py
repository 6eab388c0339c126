"""Corpora: the bundled UDHR (offline) and loaders for FLORES+, Belebele and MGSM (hub or local copy)."""

from ._hub import (
    MGSM_LANGUAGES,
    BelebeleItem,
    MGSMItem,
    belebele,
    belebele_items,
    flores,
    mgsm,
    mgsm_items,
)
from ._udhr import udhr, udhr_languages, udhr_segments, udhr_statistics
from .reference import REFERENCE_STATS, reference_stats

__all__ = [
    "MGSM_LANGUAGES",
    "REFERENCE_STATS",
    "BelebeleItem",
    "MGSMItem",
    "belebele",
    "belebele_items",
    "flores",
    "mgsm",
    "mgsm_items",
    "reference_stats",
    "udhr",
    "udhr_languages",
    "udhr_segments",
    "udhr_statistics",
]
