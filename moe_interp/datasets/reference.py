"""Routing statistics of real models shipped with the package, for docs, tests and offline use."""

import difflib
import json
from importlib import resources

from safetensors.torch import load_file

from moe_interp.analysis._stats import RoutingStats, StatsFileError

__all__ = ["REFERENCE_STATS", "reference_stats"]

# name -> what it is; the files live in moe_interp/data/reference/<name>/ (with LICENSE, SOURCE.md).
REFERENCE_STATS = {
    "qwen3-30b-a3b-mgsm": "Qwen3-30B-A3B (48 MoE layers, 128 experts, top-8) on MGSM prompts in bn de en es fr ja "
                          "sw zh: the counts released with arXiv 2601.14050 (MIT)",
}


def reference_stats(name: str = "qwen3-30b-a3b-mgsm") -> RoutingStats:
    """Load a bundled `RoutingStats` by name (see `REFERENCE_STATS`); no network needed.

    ```python
    >>> import moe_interp as mi
    >>> p = mi.datasets.reference_stats("qwen3-30b-a3b-mgsm")
    >>> p.languages, p.count.shape, p.top_k
    (('bn', 'de', 'en', 'es', 'fr', 'ja', 'sw', 'zh'), torch.Size([8, 48, 128]), 8)
    >>> p.exclusive_experts("sw").size
    271

    ```
    """
    if name not in REFERENCE_STATS:
        close = difflib.get_close_matches(name, list(REFERENCE_STATS), n=3, cutoff=0.3)
        raise KeyError(f"no reference stats named {name!r}; close matches: {close}; available: {list(REFERENCE_STATS)}")
    folder = resources.files("moe_interp").joinpath("data", "reference", name)
    meta_file, tensor_file = folder.joinpath("meta.json"), folder.joinpath("stats.safetensors")
    try:
        header = json.loads(meta_file.read_text())
        with resources.as_file(tensor_file) as path:
            tensors = load_file(path)
    except (OSError, ValueError) as error:
        raise StatsFileError(f"bundled reference data {folder} is damaged or missing: {error}") from None
    return RoutingStats(tuple(header["languages"]), tuple(header["layers"]), header["num_experts"], header["top_k"],
                        tensors["count"].long(), tensors["gate_mass"].double(), tensors["tokens"].long(),
                        meta={**header["meta"], "reference": name})
