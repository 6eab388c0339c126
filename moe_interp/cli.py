"""The `moe-interp` command: profile, report, ablate, steer, and the offline demo."""

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, exit code 2
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _fail(message: str) -> None:
    sys.stderr.write(f"moe-interp: error: {message}\n")
    raise SystemExit(2)


def _model(name: str | None, trained: bool = True) -> Any:
    import moe_interp as mi

    if name in (None, "demo"):
        return mi.zoo.demo_model(trained=trained)
    if name.startswith("tiny:"):
        # room for every bundled text (the longest UDHR paragraph is 7077 bytes): never truncated
        return mi.zoo.tiny_model(name[5:], max_position_embeddings=8192)
    # A hub id is "name" or "org/name"; anything shaped like a path is a local directory,
    # checked here so a typo never turns into a hub lookup and a traceback.
    path = Path(name).expanduser()
    if (name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name) and not path.is_dir():
        _fail(f"--model {name}: no such directory; pass a local model directory, a hub id, 'demo' or "
              "'tiny:<model_type>'")
    try:
        return mi.load(str(path) if path.is_dir() else name)
    except (OSError, ValueError) as error:  # transformers/hub: not a model directory, unknown id, offline
        _fail(f"--model {name}: cannot load it ({' '.join(str(error).split())[:300]})")


def _k(model: Any, k: int | None) -> int:
    """`--k`, by default 20 (the paper's) or every expert of a smaller model, checked before any work."""
    import moe_interp as mi

    experts = mi.describe(model).num_experts
    k = min(20, experts) if k is None else k
    if not 1 <= k <= experts:
        _fail(f"--k {k}: the model has {experts} experts; pass --k between 1 and {experts}")
    return k


def _corpus(name: str, languages: list[str] | None, split: str) -> dict:
    import moe_interp as mi

    if name == "udhr":
        return mi.datasets.udhr(languages, split=split)
    _fail(f"unknown corpus {name!r}; bundled: udhr (FLORES+/Belebele/MGSM via mi.datasets in Python)")


def _languages(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _profile(args: argparse.Namespace) -> None:
    import moe_interp as mi

    if Path(args.out).exists() and not args.overwrite:  # before the profile, which may take hours
        _fail(f"--out {args.out} already exists; pass --overwrite to replace it, or another --out")
    model = _model(args.model)
    corpus = _corpus(args.corpus, _languages(args.languages), args.split)
    stats = mi.profile(model, corpus, batch_size=args.batch_size, checkpoint=args.checkpoint)
    print(f"wrote {stats.save(args.out, overwrite=args.overwrite)}: {stats}")


def _report(args: argparse.Namespace) -> None:
    import moe_interp as mi
    from moe_interp import report

    parts = []
    for path in args.stats:
        stats = mi.RoutingStats.load(path)
        parts += [report.routing_summary(stats, label=str(path)), *report.routing_figures(stats)]
    print(f"wrote {report.write_report(args.out, args.title, parts)}")


def _ablate(args: argparse.Namespace) -> None:
    import moe_interp as mi

    model, stats = _model(args.model), mi.RoutingStats.load(args.stats)
    evals, targets = _languages(args.eval_languages), _languages(args.target_languages)
    corpus = _corpus(args.corpus, evals, "heldout")
    result = mi.ablation_grid(model, stats, corpus, evals, targets, path=args.out, k=_k(model, args.k),
                              threshold=args.threshold)
    print(result.summary())


def _steer(args: argparse.Namespace) -> None:
    import moe_interp as mi

    model, stats = _model(args.model), mi.RoutingStats.load(args.stats)
    k = _k(model, args.k)
    langs = _languages(args.languages)
    dev = _corpus(args.corpus, [args.target, *langs], "train")
    test = _corpus(args.corpus, [args.target, *langs], "heldout")
    result = mi.steering_eval(model, stats, dev, test, langs, target=args.target, path=args.out, k=k,
                              threshold=args.threshold, scales=[float(s) for s in args.scales.split(",")])
    print(result.summary())


def _demo(args: argparse.Namespace) -> None:
    from moe_interp.demo import run_demo

    started = time.perf_counter()
    path = run_demo(args.out, languages=_languages(args.languages), quick=args.quick)
    print(f"wrote {path} in {time.perf_counter() - started:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moe-interp", description="Record, analyse and steer MoE routing (nnsight plugin).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("profile", help="model + corpus -> routing statistics file")
    p.add_argument("--model", default="demo", help="hub id, local directory, 'demo' or 'tiny:<model_type>'")
    p.add_argument("--corpus", default="udhr")
    p.add_argument("--languages", help="comma-separated ISO 639-3 codes (default: all)")
    p.add_argument("--split", default="heldout", choices=("train", "heldout", "all"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--checkpoint", help="resume file for long runs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--out", required=True, help="output directory (RoutingStats.save); checked before profiling")
    p.set_defaults(run=_profile)

    p = sub.add_parser("report", help="statistics files -> one self-contained HTML report")
    p.add_argument("stats", nargs="+", help="directories written by `profile`")
    p.add_argument("--title", default="MoE routing report")
    p.add_argument("--out", default="report.html")
    p.set_defaults(run=_report)

    p = sub.add_parser("ablate", help="layer-band ablation grid of language-exclusive experts")
    p.add_argument("--model", default="demo")
    p.add_argument("--stats", required=True)
    p.add_argument("--corpus", default="udhr")
    p.add_argument("--eval-languages", required=True)
    p.add_argument("--target-languages", required=True)
    p.add_argument("--k", type=int, default=15, help="experts kept per language and layer")
    p.add_argument("--threshold", type=float, default=0.4)
    p.add_argument("--out", default="ablation.jsonl",
                   help="results file (resumable; cells are keyed by model, texts and ablation content)")
    p.set_defaults(run=_ablate)

    p = sub.add_parser("steer", help="routing-guided steering evaluation with confidence intervals")
    p.add_argument("--model", default="demo")
    p.add_argument("--stats", required=True)
    p.add_argument("--corpus", default="udhr")
    p.add_argument("--target", default="eng")
    p.add_argument("--languages", required=True)
    p.add_argument("--scales", default="0,0.02,0.05,0.1,0.2")
    p.add_argument("--k", type=int, help="experts kept per language and layer (default: 20, or all if fewer)")
    p.add_argument("--threshold", type=float, default=0.7)
    p.add_argument("--out", default="steering.jsonl",
                   help="results file (resumable; cells are keyed by model, texts and steer content)")
    p.set_defaults(run=_steer)

    p = sub.add_parser("demo", help="the whole pipeline on the bundled demo model and corpus -> report.html")
    p.add_argument("--out", default="report.html")
    p.add_argument("--languages", help="comma-separated ISO 639-3 codes (default: all 312 bundled)")
    p.add_argument("--quick", action="store_true", help="a smaller run (tests)")
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `moe-interp`.

    ```python
    >>> from moe_interp.cli import main
    >>> main(["report", "qwen3.routing", "--out", "report.html"])
    0
    ```
    """
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError, TypeError) as error:
        _fail(str(error).strip("'\""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
