"""Architecture adapters: where each MoE family's routers are and how they decide."""

from moe_interp.arch import _families  # noqa: F401  (registers the built-in family table)
from moe_interp.arch._adapter import RouterAdapter, UnsupportedModelError, register_adapter, registered_adapters
from moe_interp.arch._sites import Readout, Site
from moe_interp.arch._spec import BANDS, MoESpec, describe, hf_module
from moe_interp.arch._stacks import broken_nllb_moe_experts, repair_nllb_moe

__all__ = ["BANDS", "MoESpec", "Readout", "RouterAdapter", "Site", "UnsupportedModelError", "broken_nllb_moe_experts",
           "describe", "hf_module", "register_adapter", "registered_adapters", "repair_nllb_moe"]
