"""The families whose routers differ from the common transformers-5 pattern.

The common pattern (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2, GLM-4-MoE, ...): the router
computes `router_logits = F.linear(...)`, selects and returns `(logits, weights, indices)`,
and the block calls `experts(hidden, indices, weights)`. Those need no entry: detection
finds the router class from `_can_record_outputs`, the logits op from its source, and
reads the routing at the experts' arguments. Only departures from it are listed here, so
the table documents exactly what is special.
"""

from moe_interp.arch._adapter import RouterAdapter, register_adapter

FAMILIES = (
    RouterAdapter(
        name="dbrx",
        model_types=("dbrx",),
        logits="output",  # DbrxRouter returns raw logits; DbrxFFN selects after it
        readout="experts",
        selection="softmax, top-k, optional p-norm of the top-k weights (in DbrxFFN)",
    ),
    RouterAdapter(
        name="llama4",
        model_types=("llama4_text", "llama4"),
        logits="forward_0",  # super().forward, the nn.Linear call
        readout="dense",
        scores_index=0,  # returns (scores[T, E] dense, logits): reversed, no indices
        selection="top-k on logits, sigmoid of the chosen logits, dense [T, E] scores",
    ),
    RouterAdapter(
        name="phimoe",
        model_types=("phimoe",),
        logits="forward_0",  # router is an nn.Linear subclass
        readout="experts",
        selection="sparsemixer (top-2 with jitter-masked softmax)",
    ),
    RouterAdapter(
        name="gpt_oss",
        model_types=("gpt_oss",),
        readout="experts",
        selection="top-k on logits (with bias), softmax over the k",
    ),
    RouterAdapter(
        name="granitemoe",
        model_types=("granitemoe", "granitemoeshared", "granitemoehybrid"),
        readout="experts",
        selection="top-k on logits, softmax over the k",
    ),
    RouterAdapter(
        name="deepseek_v3",
        model_types=("deepseek_v3", "glm4_moe", "glm4_moe_lite", "deepseek_v32", "kimi_k2"),
        choice="scores_for_choice_0",
        readout="experts",
        selection="sigmoid, + e_score_correction_bias (selection only), group mask, top-k, "
        "renormalise, x routed_scaling_factor",
    ),
    RouterAdapter(
        name="jetmoe",
        model_types=("jetmoe",),
        # named, not detected: up to transformers 5.22 JetMoe declares two router-logits recorders (its
        # attention experts' and this one), which detection (one declared class) does not read
        router_class="JetMoeTopKGating",
        logits="logits_0",
        readout="topk",  # returns (sorted expert order, batch index, gates, sizes, logits)
        topk_op="logits_topk_0",
        weights_op="top_k_gates_0",
        selection="top-k on logits, softmax over the k; tokens regrouped per expert",
    ),
    RouterAdapter(
        name="ernie4_5_moe",
        model_types=("ernie4_5_moe",),  # ernie4_5_vl_moe: refused (modality-isolated experts, arch._spec)
        choice="self_moe_statics_0",  # softmax + a learned bias ("moe_statics"), for selection only
        readout="experts",
        selection="softmax, + moe_statics bias (selection only), top-k, renormalise",
    ),
    RouterAdapter(
        name="ergo",
        model_types=("ergo",),
        # top-k ranks `(scores + e_score_correction_bias)`, an expression no op makes (the method
        # `.topk` of an unnamed sum): rerouting masks the sigmoid's output, before the bias is added
        select="router_logits_sigmoid_0.output",
        unranked="its top-k ranks `sigmoid(logits) + e_score_correction_bias`, a sum no op of its source makes",
        readout="experts",
        selection="sigmoid, + e_score_correction_bias (selection only), top-k, renormalise, "
        "x moe_routed_scaling_factor; a learned RMSNorm per expert on its output",
    ),
    RouterAdapter(
        name="gemma4",
        model_types=("gemma4_text", "gemma4"),  # diffusion_gemma: refused (block diffusion, arch._spec)
        # the router's linear makes `expert_scores`; the router returns the softmax of them (which
        # transformers declares as its "router_logits"), top-k weights and indices. Router and
        # experts are siblings in the decoder layer, beside a dense MLP whose output is added
        logits="expert_scores_0",
        readout="experts",
        selection="RMS-normed input, softmax, top-k, renormalise, x a learned per-expert scale",
    ),
    RouterAdapter(
        name="zaya",
        model_types=("zaya",),
        # read inside the router, at its top-k: a token that chose the skip expert (index E, no compute)
        # is handed to the experts module as expert 0 with weight 0, so the experts' arguments and the
        # router's output say expert 0 where the router chose the skip expert; counted as expert E
        readout="topk",
        topk_op="torch_topk_0",
        weights_op="router_probs_masked_fill_0",  # the chosen probabilities, the skip expert's set to 0
        selection="an MLP on the hidden state (plus the previous layer's router state), softmax over the experts "
        "and a skip expert, + balancing biases (selection only), top-k; the skip expert's weight is 0",
    ),
    RouterAdapter(
        name="longcat_flash",
        model_types=("longcat_flash",),
        # read at the router's output: from transformers 5.25 the block hands its experts module a
        # zero-computation (identity) expert's slot as a routed expert with weight 0, so the experts'
        # arguments no longer say what the router chose (up to 5.24 they did; the router's output
        # is the same in both)
        readout="router",
        weights_index=1,
        indices_index=2,
        selection="softmax, + e_score_correction_bias (selection only), top-k over routed and "
        "zero-computation (identity) experts, x routed_scaling_factor",
    ),
    # Encoder-decoder models: routers in both stacks (see arch._stacks); selection by argmax,
    # with an expert capacity past which tokens are dropped (dispatched nowhere, not counted).
    RouterAdapter(
        name="nllb_moe",
        model_types=("nllb-moe",),
        logits="self_classifier_0",
        readout="dense",
        scores_index=1,  # returns (top-1 mask, combine weights [T, E] of the top-2 within capacity, logits)
        top_k=2,
        selection="softmax, top-1 and top-2 by argmax, expert capacity (eval: moe_eval_capacity_token_fraction "
        "x tokens), renormalise the two; padding dispatched nowhere",
    ),
    RouterAdapter(
        name="switch_transformers",
        model_types=("switch_transformers",),
        logits="self_classifier_1",  # self_classifier_0 is the `self.classifier.to(dtype)` cast
        readout="dispatch",
        indices_index=0,  # one-hot dispatch [B, S, E], zero past an expert's capacity
        weights_index=1,  # the chosen expert's softmax probability [B, S, 1]
        top_k=1,
        selection="softmax, top-1 by argmax, expert capacity per sequence (tokens past it are dropped, padding "
        "included: it takes capacity like any token)",
    ),
)

for _family in FAMILIES:
    register_adapter(_family)
