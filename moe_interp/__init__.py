"""moe_interp: record, analyse and steer the routers of Hugging Face MoE models with nnsight.

```python
import moe_interp as mi
model = mi.zoo.tiny_model("qwen3_moe")
with mi.trace(model, ["Hello", "Bonjour"], mi.RouterRecord()) as tr:
    logits = model.lm_head.output.save()
tr.routing.frequency()
```
"""

from . import datasets, evaluate, languages, plots, zoo
from .attribution import ExpertAttribution, expert_attribution
from .arch import MoESpec, RouterAdapter, UnsupportedModelError, describe, register_adapter
from .expert_set import PAPER, ExpertSet
from .experiment import Experiment, ablation_grid, steering_eval
from .interventions import ExpertAblate, LayerRouteSteer, RouterRecord, RouteSteer
from .loading import load, wrap
from ._fingerprint import ResumeError
from ._router_view import RouterAccessError
from .profiling import profile
from .stats import RoutingStats, StatsFileError
from .trace import generate, trace

__version__ = "0.1.0"

__all__ = [
    "ExpertAblate", "ExpertAttribution", "ExpertSet", "expert_attribution", "PAPER", "Experiment", "ablation_grid", "steering_eval", "evaluate", "LayerRouteSteer", "MoESpec", "RouteSteer", "RouterAdapter", "RouterRecord",
    "ResumeError", "RouterAccessError", "RoutingStats", "StatsFileError", "UnsupportedModelError", "describe", "generate", "load",
    "profile", "register_adapter", "trace", "wrap", "zoo", "datasets", "languages", "plots",
]
