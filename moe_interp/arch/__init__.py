"""Architecture adapters: where each MoE family's routers are and how they decide."""

from . import _families  # noqa: F401  (registers the built-in family table)
from ._adapter import RouterAdapter, UnsupportedModelError, register_adapter, registered_adapters
from ._spec import BANDS, MoESpec, describe, hf_module
from ._stacks import broken_nllb_moe_experts, repair_nllb_moe

__all__ = ["BANDS", "MoESpec", "RouterAdapter", "UnsupportedModelError", "broken_nllb_moe_experts", "describe",
           "hf_module", "register_adapter", "registered_adapters", "repair_nllb_moe"]
