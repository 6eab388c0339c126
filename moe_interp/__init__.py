"""moe_interp: record, analyse and steer the routers of Hugging Face MoE models with nnsight.

```python
>>> import moe_interp as mi
>>> model = mi.zoo.tiny_model("qwen3_moe")                  # 4 MoE layers, 8 experts, top-2
>>> with mi.trace(model, ["Hello", "Bonjour"], mi.RouterRecord()) as tr:
...     logits = model.lm_head.output.save()                # plain nnsight code works inside
>>> tr.routing.count.shape, float(tr.routing.frequency()[0, 0].sum())    # every token uses 2 experts
(torch.Size([1, 4, 8]), 2.0)

```

The public names are re-exported here. The public modules are `mi.analysis`, `mi.arch`,
`mi.datasets`, `mi.evaluate`, `mi.experiments`, `mi.languages`, `mi.plots` and `mi.zoo` (with
`moe_interp.tracing`, `moe_interp.cli` and the demo's `moe_interp.experiments.demo` / `.report`);
a module with a part of its path starting with `_` is private. The folders of the package are
its layers, bottom to top: `core`, `arch`, `runtime`, `models`, `analysis`, `tracing`, `datasets`,
`experiments`, and this face (docs/concepts.md, "How the package is built").
"""
from moe_interp import analysis, arch, datasets, experiments
from moe_interp.models import zoo
from moe_interp.experiments import evaluate
from moe_interp.core import languages
from moe_interp.analysis import plots
from moe_interp.core._counts import RoutingCounts
from moe_interp.core._fingerprint import ResumeError
from moe_interp.runtime._router_view import RouterAccessError
from moe_interp.tracing import generate, trace
from moe_interp.arch import (
    MoESpec,
    RouterAdapter,
    UnsupportedModelError,
    describe,
    register_adapter,
)
from moe_interp.experiments._attribution import ExpertAttribution, expert_attribution
from moe_interp.experiments import Experiment, ablation_grid, steering_eval
from moe_interp.core._expert_set import PAPER, ExpertSet
from moe_interp.runtime._edits import ScoreKind, SteerKind, WeightsKind
from moe_interp.runtime._interventions import ExpertAblate, Intervention, LayerRouteSteer, RouterRecord, RouteSteer
from moe_interp.runtime._plan import Edit
from moe_interp.models._loading import load, wrap
from moe_interp.experiments._profile import profile
from moe_interp.analysis._stats import RoutingStats, StatsFileError

__version__ = "0.1.0"

__all__ = [
    "PAPER",
    "Edit",
    "Experiment",
    "ExpertAblate",
    "ExpertAttribution",
    "ExpertSet",
    "Intervention",
    "LayerRouteSteer",
    "MoESpec",
    "ResumeError",
    "RouteSteer",
    "RouterAccessError",
    "RouterAdapter",
    "RouterRecord",
    "RoutingCounts",
    "RoutingStats",
    "ScoreKind",
    "StatsFileError",
    "SteerKind",
    "UnsupportedModelError",
    "WeightsKind",
    "ablation_grid",
    "analysis",
    "arch",
    "datasets",
    "describe",
    "evaluate",
    "experiments",
    "expert_attribution",
    "generate",
    "languages",
    "load",
    "plots",
    "profile",
    "register_adapter",
    "steering_eval",
    "trace",
    "wrap",
    "zoo",
]
