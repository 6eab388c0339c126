"""Corpora: the bundled UDHR (offline), your own texts (`load_corpus`: a directory, JSON Lines or CSV, with a
hash-based train/held-out split) and loaders for FLORES+, Belebele and MGSM (hub or local copy)."""

from moe_interp.datasets._hub import (
    MGSM_LANGUAGES,
    BelebeleItem,
    MGSMItem,
    belebele,
    belebele_items,
    flores,
    mgsm,
    mgsm_items,
)
from moe_interp.datasets._local import HELDOUT_FRACTION, load_corpus, split_corpus
from moe_interp.datasets._udhr import udhr, udhr_languages, udhr_segments, udhr_statistics
from moe_interp.datasets.reference import REFERENCE_STATS, reference_stats

__all__ = [
    "HELDOUT_FRACTION",
    "MGSM_LANGUAGES",
    "REFERENCE_STATS",
    "BelebeleItem",
    "MGSMItem",
    "belebele",
    "belebele_items",
    "flores",
    "load_corpus",
    "mgsm",
    "mgsm_items",
    "reference_stats",
    "split_corpus",
    "udhr",
    "udhr_languages",
    "udhr_segments",
    "udhr_statistics",
]
