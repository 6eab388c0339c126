"""Experiments: resumable grids (language x condition) and the paper's two designs, each
reported with its evidence: the layer-band ablation grid (intervals, the other languages'
effect, a random-expert-set control, a verdict) and the routing-guided steering evaluation
(scale chosen on dev texts, outcome on test texts with paired intervals, routing shift and
dose-response); and which tokens each expert takes (`vocabulary`).

The code lives in private modules (`_grid`, `_ablation`, `_steering`); these are the public names.
"""

from moe_interp.experiments._ablation import VERDICT_RULES, VERDICTS, AblationResult, ablation_grid, ablation_verdict
from moe_interp.experiments._grid import Experiment
from moe_interp.experiments._steering import (
    SteeringResult,
    dose_response_across,
    dose_response_across_findings,
    dose_response_figure,
    dose_response_findings,
    dose_response_seeds_figure,
    routing_shift,
    steering_eval,
)
from moe_interp.experiments._vocabulary import vocabulary

__all__ = ["VERDICTS", "VERDICT_RULES", "AblationResult", "Experiment", "SteeringResult", "ablation_grid",
           "ablation_verdict", "dose_response_across", "dose_response_across_findings", "dose_response_figure",
           "dose_response_findings", "dose_response_seeds_figure", "routing_shift", "steering_eval",
           "vocabulary"]
