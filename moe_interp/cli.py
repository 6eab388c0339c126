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
        return mi.zoo.tiny_model(name[5:])
    return mi.load(name)


def _corpus(name: str, languages: list[str] | None, split: str) -> dict:
    import moe_interp as mi

    if name == "udhr":
        return mi.datasets.udhr(languages, split=split)
    _fail(f"unknown corpus {name!r}; bundled: udhr (FLORES+/Belebele/MGSM via mi.datasets in Python)")


def _languages(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _profile(args: argparse.Namespace) -> None:
    import moe_interp as mi

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
    result = mi.ablation_grid(model, stats, corpus, evals, targets, path=args.out, k=args.k, threshold=args.threshold)
    print(result.summary())


def _steer(args: argparse.Namespace) -> None:
    import moe_interp as mi

    model, stats = _model(args.model), mi.RoutingStats.load(args.stats)
    langs = _languages(args.languages)
    dev = _corpus(args.corpus, [args.target, *langs], "train")
    test = _corpus(args.corpus, [args.target, *langs], "heldout")
    result = mi.steering_eval(model, stats, dev, test, langs, target=args.target, path=args.out,
                              scales=[float(s) for s in args.scales.split(",")])
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
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--out", required=True, help="output directory (RoutingStats.save)")
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
    p.add_argument("--k", type=int, default=15)
    p.add_argument("--threshold", type=float, default=0.4)
    p.add_argument("--out", default="ablation.jsonl", help="results file (resumable)")
    p.set_defaults(run=_ablate)

    p = sub.add_parser("steer", help="routing-guided steering evaluation with confidence intervals")
    p.add_argument("--model", default="demo")
    p.add_argument("--stats", required=True)
    p.add_argument("--corpus", default="udhr")
    p.add_argument("--target", default="eng")
    p.add_argument("--languages", required=True)
    p.add_argument("--scales", default="0,0.02,0.05,0.1,0.2")
    p.add_argument("--out", default="steering.jsonl", help="results file (resumable)")
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
