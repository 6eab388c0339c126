"""Convert the paper's released MGSM routing counts (JSON) into the package's compact reference data.

    python scripts/build_reference_stats.py [--source ../shared/data/qwen3-30b-a3b-mgsm-routing]

Writes `moe_interp/data/reference/qwen3-30b-a3b-mgsm/` (`stats.safetensors`, `meta.json`,
`LICENSE`, `SOURCE.md`), loaded by `mi.datasets.reference_stats("qwen3-30b-a3b-mgsm")`.
Counts are stored as int32 and gate mass as float32: both are exact for these files (counts
are below 2**31; the released gate sums were accumulated in bf16, so float32 holds them
exactly), which the script checks before writing.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from moe_interp.analysis._stats import RoutingStats

ROOT = Path(__file__).resolve().parents[1]
NAME = "qwen3-30b-a3b-mgsm"
LANGUAGES = ("bn", "de", "en", "es", "fr", "ja", "sw", "zh")
SOURCE_MD = """# Qwen3-30B-A3B routing counts on MGSM (8 languages)

Routing counts released with "Understanding Multilingualism in Mixture-of-Experts LLMs: Routing
Mechanism, Expert Specialization, and Layerwise Steering" (arXiv 2601.14050), from
https://github.com/conctsai/Multilingualism-in-Mixture-of-Experts-LLMs at commit ea1d65b,
MIT licence (see LICENSE in this directory, which must accompany these files).

Model: Qwen3-30B-A3B (48 MoE layers, 128 experts, top-8). Text: MGSM prompts in bn de en es
fr ja sw zh. For every token and MoE layer, `count[lang, layer, expert]` counts how often the
expert was among the 8 selected, `gate_mass` sums its (renormalised) routing weight (the
authors accumulated it in bf16), `tokens[lang]` is the number of tokens.

Converted by `scripts/build_reference_stats.py` from the files `mgsm_{lang}.json`
(format `{layer: {expert: {"activation_tokens": int, "gate_values_sum": float},
"total_tokens": int}}`) without any change of value: counts as int32, gate mass as float32
(both exact for these data; checked by the script and by tests/test_analysis.py).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared/data/qwen3-30b-a3b-mgsm-routing")
    parser.add_argument("--out", type=Path, default=ROOT / "moe_interp/data/reference" / NAME)
    args = parser.parse_args()

    stats = RoutingStats.from_paper(args.source, LANGUAGES, pattern="mgsm_{lang}.json")
    count32, mass32 = stats.count.to(torch.int32), stats.gate_mass.to(torch.float32)
    if not torch.equal(count32.long(), stats.count) or not torch.equal(mass32.double(), stats.gate_mass.double()):
        raise SystemExit("int32 / float32 would not hold these counts exactly; store wider types")
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({"count": count32.contiguous(), "gate_mass": mass32.contiguous(),
               "tokens": stats.tokens.to(torch.int64).contiguous()}, args.out / "stats.safetensors",
              metadata={"name": NAME})
    header = {"format": "moe_interp.reference/1", "name": NAME, "languages": list(stats.languages),
              "layers": list(stats.layers), "num_experts": stats.num_experts, "top_k": stats.top_k,
              "meta": {"model": "Qwen/Qwen3-30B-A3B", "corpus": "MGSM (prompts)", "source": "arXiv 2601.14050",
                       "code": "github.com/conctsai/Multilingualism-in-Mixture-of-Experts-LLMs@ea1d65b",
                       "license": "MIT"}}
    (args.out / "meta.json").write_text(json.dumps(header, indent=1) + "\n")
    shutil.copyfile(args.source / "LICENSE", args.out / "LICENSE")
    (args.out / "SOURCE.md").write_text(SOURCE_MD)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB): {stats}")


if __name__ == "__main__":
    main()
