"""The paper's analyses of routing counts: divergences, clustering, expert sets, layer profiles,
bootstrap intervals, and the evidence behind a verdict (controls, baselines, permutation tests).

Every function takes a `RoutingCounts` (any `RoutingStats`); `RoutingStats` offers the same
analyses as methods. Layers are chosen with one vocabulary everywhere (`layers=`: indices, a
range, a slice, `"early"` / `"middle"` / `"late"` in the paper's proportions, `"early-third"`
/ ... in equal thirds, or a stack name; see `moe_interp.core._layers`).

```python
>>> import moe_interp as mi
>>> p = mi.datasets.reference_stats()            # the paper's released MGSM counts
>>> mi.analysis.exclusive_experts(p, "sw", layers="middle").size
143

```
"""

from moe_interp.core._layers import BANDS, PAPER_EDGES, THIRD_BANDS, THIRDS, bands
from moe_interp.analysis._baselines import ngram_baselines, ngram_stats, risk_difference
from moe_interp.analysis._bootstrap import STATISTICS, BootstrapResult, bootstrap, resample
from moe_interp.analysis._clustering import (
    Clustering,
    FamilyAgreement,
    adjusted_rand_index,
    cluster,
    family_agreement,
)
from moe_interp.analysis._compare import Comparison, compare, match_experts
from moe_interp.analysis._correlation import rank_correlation
from moe_interp.analysis._divergence import (
    METRICS,
    band_average,
    divergence,
    entropy,
    mean_offdiagonal,
    similarity,
)
from moe_interp.analysis._evidence import (
    FamilyEvidence,
    Interval,
    LayerEvidence,
    SeedTest,
    family_evidence,
    hierarchical_interval,
    interval,
    layer_evidence,
    paired_interval,
    seed_test,
    stratified_interval,
)
from moe_interp.analysis._expert_sets import (
    THRESHOLD,
    exclusive_experts,
    exclusive_mask,
    shared_experts,
    shared_mask,
    shares,
)
from moe_interp.analysis._health import Health, health
from moe_interp.analysis._layer_profile import LayerProfile, layer_profile
from moe_interp.analysis._routing_parts import SplitEffect, co_activation_rate, split_effect
from moe_interp.analysis._vocabulary import Vocabulary

__all__ = [
    "BANDS",
    "METRICS",
    "PAPER_EDGES",
    "STATISTICS",
    "THIRDS",
    "THIRD_BANDS",
    "THRESHOLD",
    "BootstrapResult",
    "Clustering",
    "Comparison",
    "FamilyAgreement",
    "FamilyEvidence",
    "Health",
    "Interval",
    "LayerEvidence",
    "LayerProfile",
    "SeedTest",
    "SplitEffect",
    "Vocabulary",
    "adjusted_rand_index",
    "band_average",
    "bands",
    "bootstrap",
    "cluster",
    "co_activation_rate",
    "compare",
    "divergence",
    "entropy",
    "exclusive_experts",
    "exclusive_mask",
    "family_agreement",
    "family_evidence",
    "health",
    "hierarchical_interval",
    "interval",
    "layer_evidence",
    "layer_profile",
    "match_experts",
    "mean_offdiagonal",
    "ngram_baselines",
    "ngram_stats",
    "paired_interval",
    "rank_correlation",
    "resample",
    "risk_difference",
    "seed_test",
    "shared_experts",
    "shared_mask",
    "shares",
    "similarity",
    "split_effect",
    "stratified_interval",
]
