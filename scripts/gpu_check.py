"""GPU correctness check, one command: `python scripts/gpu_check.py` (about 20 s on an H100).

The bundled demo model on the GPU against the same model on the CPU: a trace with steering,
reroute and drop ablations and per-token recording (locally, where the plan is placed on the
GPU beforehand, and with `remote="local"`, where the kernels move it), invokes, greedy
generation, and `mi.profile(remote="local")` against a local profile. Exits 1 on a failure.
`python scripts/gpu_check.py cpu` runs the same on the CPU (a check of the script only)."""
import sys
import tempfile
import warnings

import torch

warnings.filterwarnings("ignore")
import moe_interp as mi

failures = []
def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name, detail, flush=True)
    if not ok:
        failures.append(name)

src = mi.zoo.demo_model()
d = tempfile.mkdtemp()
src._module.save_pretrained(d); src.tokenizer.save_pretrained(d)
DEV = sys.argv[1] if len(sys.argv) > 1 else "cuda"
gpu = mi.load(d)
gpu._module.to(DEV)
cpu = mi.load(d)
cpu._module.to("cpu")  # with accelerate installed, a GPU machine loads onto the GPU by default
prompts = ["Hello there, how are you?", "Bonjour tout le monde", "Guten Morgen, liebe Welt, wie geht es?"]
spec = mi.describe(gpu)
layers = list(spec.moe_layers)
ivs = [mi.LayerRouteSteer({l: {0: 1.0, 3: -0.5} for l in layers[2:6]}, scale=0.3),
       mi.ExpertAblate({l: [1, 2] for l in layers[:3]}), mi.ExpertAblate({layers[-1]: [5]}, mode="drop"),
       mi.RouterRecord(per_token=True)]

def run(model, **kw):
    with mi.trace(model, prompts, *ivs, **kw) as tr:
        logits = model.lm_head.output.save()
    print("  model on", next(model._module.parameters()).device, "logits on", logits.device, flush=True)
    return tr.routing, logits.float().cpu()

ref, ref_logits = run(cpu)
for kw in [{}, {"remote": "local"}]:
    got, logits = run(gpu, **kw)
    diff = (got.count != ref.count).sum().item()
    check(f"trace {kw} counts cuda == cpu", diff <= 4, f"{diff} counts differ of {ref.count.numel()}")
    check(f"trace {kw} tokens", torch.equal(got.tokens, ref.tokens))
    check(f"trace {kw} per-token rows", got.per_token["indices"].shape == ref.per_token["indices"].shape,
          str(tuple(got.per_token["indices"].shape)))
    err = (logits - ref_logits).abs().max().item()
    check(f"trace {kw} logits close", err < 1e-3, f"max abs err {err:.2e}")

with mi.trace(gpu, mi.RouterRecord()) as tr:
    with tr.invoke(prompts[0], group="en"):
        pass
    with tr.invoke(prompts[1:], group="x"):
        pass
check("invokes groups", tr.routing.groups == ("en", "x"), str(tr.routing.groups))
with mi.trace(gpu, prompts[0], mi.RouterRecord()) as one:
    pass
check("invoke en == single trace", torch.equal(tr.routing.count[0], one.routing.count[0]))

for model, name in [(gpu, "cuda"), (cpu, "cpu")]:
    with mi.generate(model, prompts[:2], mi.RouterRecord(), ivs[0], max_new_tokens=6, do_sample=False) as gen:
        pass
    if name == "cuda":
        g_text, g_stats = gen.text, gen.routing
    else:
        check("generate text cuda == cpu", g_text == gen.text, repr(g_text))
        check("generate tokens counted", torch.equal(g_stats.tokens, gen.routing.tokens), str(g_stats.tokens))

corpus = {k: v[:6] for k, v in mi.datasets.udhr(["eng", "deu", "fin"], split="heldout").items()}
corpus = {k: [t[:200] for t in v] for k, v in corpus.items()}
p_local = mi.profile(gpu, corpus, batch_size=4, progress=False)
p_remote = mi.profile(gpu, corpus, batch_size=4, progress=False, remote="local")
check("profile remote=local == local on cuda", torch.equal(p_local.count, p_remote.count))
print("FAILURES:", failures)
sys.exit(1 if failures else 0)
