"""Record, analyse and steer MoE routing in a few lines (offline, CPU, seconds).

    python examples/quickstart.py
"""

import moe_interp as mi

model = mi.zoo.tiny_model("qwen3_moe")          # or mi.load("allenai/OLMoE-1B-7B-0924")
spec = mi.describe(model)
print(f"{spec.arch}: MoE layers {spec.moe_layers}, {spec.num_experts} experts, top-{spec.top_k}")

corpus = mi.datasets.udhr(["eng", "fra", "deu", "cmn"], split="heldout")
with mi.trace(model, mi.RouterRecord()) as tr:
    for lang, texts in corpus.items():
        with tr.invoke(texts[:4], group=lang, truncation=True, max_length=256):   # the tiny model's positions
            pass
profile = tr.routing
print(profile)
print("JS divergence to English, middle band:")
js = profile.divergence("js", layers="middle").mean(0)   # [layer, lang, lang] -> band average
for lang in profile.languages:
    print(f"  {lang}: {float(js[profile.language_index('eng'), profile.language_index(lang)]):.3f}")

steer = mi.RouteSteer(layers="middle", target="eng", stats=profile, languages=("eng", "fra"), k=4, scale=0.5)
with mi.trace(model, corpus["fra"][:2], steer, mi.RouterRecord(), truncation=True, max_length=256) as tr:
    pass
print("steered routing of French text:", tr.routing)
