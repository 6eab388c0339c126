"""The `moe-interp` command: profile, report, ablate, steer, and the offline demo.

`moe-interp --help` lists the commands; `moe-interp <command> --help` shows every option with
its default and an example. Errors are one line naming the option to change, exit code 2.
"""

import argparse
import difflib
import os
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["main"]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each help text (unless the text already says it); examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one clear line, exit code 2
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


class _Renamed(argparse.Action):
    """An option that was renamed: giving it is an error naming its new name (`const`)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string} is named {self.const} now")


def _fail(message: str) -> None:
    sys.stderr.write(f"moe-interp: error: {message}\n")
    raise SystemExit(2)


def _say(message: str) -> None:
    """Progress notes go to stderr, next to the progress bars; stdout keeps the results."""
    sys.stderr.write(f"moe-interp: {message}\n")
    sys.stderr.flush()


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
        _fail(f"--model {name}: cannot load it ({' '.join(str(error).split())[:300]}); offline, try --model demo")


def _k(model: Any, stats: Any, k: int | None, paper_k: int) -> int:
    """`--k`, by default the paper's `paper_k` of 128 experts scaled to the model, checked before any work."""
    import moe_interp as mi
    from moe_interp.core._expert_set import check_k

    experts = mi.describe(model).num_experts
    try:
        return check_k(k, experts, stats.top_k, paper_k, name="--k")
    except ValueError as error:
        _fail(f"{error} (the model has {experts} experts)")


class _CorpusName(str):
    """`--corpus`'s value, carrying the options of a corpus file (`--language-column`, `--text-column`, `--unit`,
    `--dataset-split`)."""

    options: dict


# the corpus-file options and their defaults
_CORPUS_OPTIONS = {"language_column": "language", "text_column": "text", "unit": "paragraph", "dataset_split": "train"}


class _CorpusAction(argparse.Action):
    """`--corpus`: the name, with the corpus-file options given so far (before or after it)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        name = _CorpusName(values)
        name.options = {key: getattr(namespace, key) for key in _CORPUS_OPTIONS}
        setattr(namespace, self.dest, name)


class _CorpusOption(argparse.Action):
    """`--language-column`, `--text-column`, `--unit`, `--dataset-split`: stored, and passed on to `--corpus` if it
    came first."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        if isinstance(getattr(namespace, "corpus", None), _CorpusName):
            namespace.corpus.options[self.dest] = values


def _add_resamples(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples over texts for each interval")
    p.add_argument("--replicates", action=_Renamed, const="--resamples", nargs="?", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)


def _add_pairs_to(p: argparse.ArgumentParser, use: str) -> None:
    p.add_argument("--pairs-to", metavar="LANG",
                   help="encoder-decoder models: pair each source language's udhr text with LANG's text of the same "
                        f"segment, directions '<source>-LANG' (e.g. --pairs-to eng: deu-eng, fin-eng); {use}. "
                        "Only the bundled, parallel udhr (your own pairs: the Python API, "
                        "mi.profile(model, {(src, tgt): [(source text, target text), ...]}))")


def _add_corpus(p: argparse.ArgumentParser, use: str) -> None:
    p.add_argument("--corpus", default="udhr", action=_CorpusAction,
                   help=f"{use}: the bundled 'udhr' (312 languages, its own split), or your own: a directory of "
                        "UTF-8 <language>.txt files (eng.txt, deu.txt), a .jsonl or a .csv file with a language "
                        "and a text column, or hf:<dataset name or save_to_disk path> (needs moe-interp[datasets]); "
                        "its train/held-out split is by a hash of each text "
                        "(mi.datasets.split_corpus: 25%% held out)")
    p.add_argument("--language-column", default=_CORPUS_OPTIONS["language_column"], action=_CorpusOption,
                   help="column of the language code in a .jsonl/.csv --corpus")
    p.add_argument("--text-column", default=_CORPUS_OPTIONS["text_column"], action=_CorpusOption,
                   help="column of the text in a .jsonl/.csv --corpus")
    p.add_argument("--unit", default=_CORPUS_OPTIONS["unit"], choices=("paragraph", "line"), action=_CorpusOption,
                   help="one text per blank-line-separated paragraph or per line, in a directory --corpus")
    p.add_argument("--dataset-split", default=_CORPUS_OPTIONS["dataset_split"], action=_CorpusOption,
                   help="the split of an hf:<dataset> --corpus to read (then split again by --split)")


def _refuse_file_options_on_udhr(args: argparse.Namespace) -> None:
    """The corpus-file options read your own files: on the bundled corpus they would do nothing."""
    if str(getattr(args, "corpus", "")) != "udhr":
        return
    given = [f"--{key.replace('_', '-')}" for key, default in _CORPUS_OPTIONS.items()
             if getattr(args, key, default) != default]
    if given:
        _fail(f"{', '.join(given)} read{'s' * (len(given) == 1)} your own corpus file (--corpus <path>); the bundled "
              "udhr has its own columns and split: leave them out, or pass --corpus")


def _user_corpus(name: str, split: str) -> dict:
    """A corpus of your own (`mi.datasets.load_corpus`), any error one line naming `--corpus`."""
    import moe_interp as mi

    hf = name.startswith("hf:")  # a Hugging Face dataset: its name or path is checked by `datasets`
    path = Path(name).expanduser()
    if not hf and not path.exists():
        _fail(f"--corpus {name}: not a bundled corpus (udhr) and no such file or directory; pass udhr, a directory "
              "of <language>.txt files, a .jsonl or a .csv file, or hf:<dataset> (FLORES+/Belebele/MGSM via "
              "mi.datasets in Python)")
    options = dict(getattr(name, "options", {}))
    try:
        with warnings.catch_warnings(record=True) as caught:  # unknown codes: one note each, once per run
            warnings.simplefilter("always", UserWarning)
            corpus = mi.datasets.load_corpus(str(name) if hf else path, split, **options)
    except (OSError, ValueError, ImportError) as error:
        _fail(f"--corpus {name}: {error}")
    for warning in caught:
        if str(warning.message) not in _NOTED:
            _NOTED.add(str(warning.message))
            _say(f"note: {warning.message}")
    return corpus


_NOTED: set[str] = set()


def _corpus(name: str, languages: list[str] | None, split: str, model: str | None = None) -> dict:
    import moe_interp as mi

    if name != "udhr":
        corpus = _user_corpus(name, split)
        if languages is not None:
            corpus = {lang: corpus[lang] for lang in languages}
        if model in (None, "demo"):  # the demo model reads pieces of at most 256 bytes, as it was trained
            from moe_interp.experiments.demo import MAX_BYTES

            corpus = {lang: [p for t in texts for p in _cut(t, MAX_BYTES)] for lang, texts in corpus.items()}
        return corpus
    if model in (None, "demo"):  # the demo model reads 256-byte pieces, as it was trained and as the demo runs it
        from moe_interp.experiments.demo import demo_corpus

        return demo_corpus(languages if languages is not None else mi.datasets.udhr_languages(), split=split)
    return mi.datasets.udhr(languages, split=split)


def _cut(text: str, max_bytes: int) -> list[str]:
    """`text` in pieces of at most `max_bytes` UTF-8 bytes, cut at character boundaries (as the demo cuts UDHR)."""
    pieces, piece, size = [], "", 0
    for char in text:
        width = len(char.encode())
        if size + width > max_bytes:
            pieces.append(piece)
            piece, size = "", 0
        piece, size = piece + char, size + width
    return [*pieces, piece] if piece else pieces


def _corpus_languages(name: str) -> list[str]:
    import moe_interp as mi

    if name != "udhr":
        return list(_user_corpus(name, "all"))
    return sorted(mi.datasets.udhr_languages())


def close_matches(code: str, available: list[str]) -> list[str]:
    """Codes of `available` the user may have meant by `code`: its ISO 639-3 code when `code`
    is ISO 639-1, BCP-47, a legacy code or a name (`en`, `de-AT`, `ger`, `German` -> `eng`,
    `deu`), then codes spelled alike.

    ```python
    >>> close_matches("en", ["deu", "eng", "fra", "ven"]), close_matches("ger", ["deu", "eng", "gle"])
    (['eng'], ['deu'])

    ```
    """
    from moe_interp.core import languages

    try:
        iso = languages.info(code).iso639_3
    except KeyError:
        iso = None
    if iso in available:  # the code names a language we have: that is the one meant
        return [iso]
    return difflib.get_close_matches(code.lower(), available, n=3, cutoff=0.6)


def _codes(flag: str, text: str | None, available: list[str], where: str) -> list[str] | None:
    """Comma-separated language codes of `flag`, each one of `available`; `None` if not given."""
    if text is None:
        return None
    from moe_interp.core import languages

    codes = [t.strip() for t in text.split(",") if t.strip()]
    if not codes:
        _fail(f"{flag} is empty; pass comma-separated ISO 639-3 codes, e.g. {flag} eng,deu,fra")
    repeated = sorted({c for c in codes if codes.count(c) > 1})
    if repeated:
        _fail(f"{flag} lists {', '.join(repeated)} more than once; give each language once")
    for code in codes:
        if code not in available:
            guesses = close_matches(code, available)
            named = ", ".join(f"{g} ({_name(languages, g)})" for g in guesses)
            listed = ", ".join(available) if len(available) <= 12 else ", ".join(available[:12]) + ", ..."
            hint = f"did you mean {named}?" if guesses else \
                f"the {len(available)} available (ISO 639-3 codes): {listed}"
            _fail(f"{flag}: {code!r} is not a language of {where}; {hint}")
    return codes


def _name(languages: Any, code: str) -> str:
    import moe_interp as mi

    meta = mi.datasets.udhr_languages().get(code)
    if meta is not None:
        return meta["name"]
    try:
        return languages.info(code).name
    except KeyError:
        return "no name known"


def _stats_languages(args: argparse.Namespace, stats: Any) -> list[str]:
    corpus = set(_corpus_languages(args.corpus))
    parts = stats.values() if isinstance(stats, dict) else [stats]
    return [l for l in dict.fromkeys(l for part in parts for l in part.languages) if l in corpus]


def _load_stats(path: str) -> Any:
    """`--stats`: one statistics directory, or the directory `moe-interp profile` wrote for an
    encoder-decoder model (`OUT/encoder`, `OUT/decoder`): then `{stack: RoutingStats}`."""
    import moe_interp as mi

    root = Path(path)
    if root.is_dir() and not (root / "stats.safetensors").exists():
        stacks = [d for d in root.iterdir() if d.is_dir() and (d / "stats.safetensors").exists()]
        if stacks:
            order = {"encoder": 0, "decoder": 1}
            stacks.sort(key=lambda d: (order.get(d.name, 2), d.name))
            return {d.name: mi.RoutingStats.load(d) for d in stacks}
    return mi.RoutingStats.load(path)


def _check_stacks(model: Any, stats: Any, path: str) -> None:
    """An encoder-decoder model needs the statistics of both stacks: the directory `profile` wrote."""
    import moe_interp as mi

    spec = mi.describe(model)
    if spec.stack_inputs is not None and not isinstance(stats, dict):
        stacks = list(dict.fromkeys(spec.stacks))
        _fail(f"--stats {path} holds one stack's statistics; this {spec.arch} model has {len(stacks)} stacks "
              f"({', '.join(stacks)}), whose experts are chosen per stack: pass the --out directory `moe-interp "
              f"profile` wrote for it (it holds {', '.join(f'OUT/{s}' for s in stacks)})")


def _one_stack(stats: Any) -> Any:
    """One `RoutingStats` of `stats` (its top-k is every stack's)."""
    return next(iter(stats.values())) if isinstance(stats, dict) else stats


def _pairs_early(args: argparse.Namespace) -> str | None:
    """`--pairs-to LANG`, checked before any model is loaded: the demo model (a causal LM), a corpus of your own
    (not parallel) and a LANG not in the udhr are refused. `None` without `--pairs-to`."""
    import moe_interp as mi

    if args.pairs_to is None:
        return None
    if args.model in (None, "demo"):
        _fail("--pairs-to pairs texts for an encoder-decoder model (its encoder reads the source, its decoder the "
              "target); --model demo is a causal LM (one stack): leave --pairs-to out, or pass e.g. --model "
              "tiny:switch_transformers, tiny:nllb-moe or facebook/nllb-moe-54b")
    if str(args.corpus) != "udhr":
        _fail(f"--pairs-to pairs the bundled udhr corpus's aligned segments; --corpus {args.corpus} is not known to "
              "be parallel: leave --pairs-to out, or pass your pairs in Python: mi.profile(model, {(src, tgt): "
              "[(source text, target text), ...]}) (mi.ablation_grid and mi.steering_eval take the same form)")
    (to,) = _codes("--pairs-to", args.pairs_to, sorted(mi.datasets.udhr_languages()), "the udhr corpus")
    return to


def _pairs_model(model: Any, args: argparse.Namespace) -> None:
    """`--pairs-to` on a model without an encoder and a decoder: refused, before any work."""
    import moe_interp as mi

    spec = mi.describe(model)
    if args.pairs_to is not None and spec.stack_inputs is None:
        _fail(f"--pairs-to pairs texts for an encoder-decoder model; --model {args.model} ({spec.arch}) is a causal "
              "LM (one stack), which reads plain texts: leave --pairs-to out")


def _sources(flag: str, codes: list[str], to: str, given: bool) -> list[str]:
    """The source languages of `flag` for `--pairs-to to`: `to` itself would pair each text with itself, so it is
    left out of a default list and refused when named."""
    if to not in codes:
        return codes
    if given:
        _fail(f"{flag} lists {to}, the --pairs-to language: {to}-{to} would pair each text with itself; leave {to} "
              f"out of {flag} (its texts are every pair's target)")
    return [c for c in codes if c != to]


def _pairs(sources: list[str], to: str, split: str) -> dict:
    """`{(source, to): [(source text, to's text of the same segment), ...]}` from the udhr, aligned by segment id."""
    import moe_interp as mi

    segments = mi.datasets.udhr_segments([*sources, to], split=split)
    return {(s, to): [(segments[s][i], text) for i, text in segments[to].items()] for s in sources}


def _profile(args: argparse.Namespace) -> None:
    import moe_interp as mi

    if Path(args.out).exists() and not args.overwrite:  # before the profile, which may take hours
        _fail(f"--out {args.out} already exists; pass --overwrite to replace it, or another --out")
    to = _pairs_early(args)
    languages = _codes("--languages", args.languages, _corpus_languages(args.corpus), f"the {args.corpus} corpus")
    if to is not None:
        languages = _sources("--languages", languages or _corpus_languages(args.corpus), to, args.languages is not None)
    model = _model(args.model)
    _pairs_model(model, args)
    if to is None:
        corpus = _corpus(args.corpus, languages, args.split, args.model)
        _say(f"profiling {args.model} on {len(corpus)} languages ({args.split} split); {args.threads_note}")
    else:
        corpus = _pairs(languages, to, args.split)
        _say(f"profiling {args.model} on {len(corpus)} directions into {to} ({args.split} split; the encoder by "
             f"source language, the decoder on the {to} targets); {args.threads_note}")
    stats = mi.profile(model, corpus, batch_size=args.batch_size, checkpoint=args.checkpoint,
                       weights_hash=args.weights_hash)
    if isinstance(stats, dict):  # an encoder-decoder model: one statistics directory per stack, under --out
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for stack, part in stats.items():
            print(f"wrote {part.save(Path(args.out) / stack, overwrite=args.overwrite)}: {stack} {part}")
        return
    print(f"wrote {stats.save(args.out, overwrite=args.overwrite)}: {stats}")


def _report(args: argparse.Namespace) -> None:
    import moe_interp as mi
    from moe_interp.experiments import report

    parts = []
    for path in args.stats:
        stats = mi.RoutingStats.load(path)
        parts += [report.routing_summary(stats, label=str(path)), *report.routing_figures(stats)]
    print(f"wrote {report.write_report(args.out, args.title, parts)}")


def _ablate(args: argparse.Namespace) -> None:
    import moe_interp as mi

    to = _pairs_early(args)
    stats = _load_stats(args.stats)
    available, where = _stats_languages(args, stats), f"--stats {args.stats} and the {args.corpus} corpus"
    evals = _codes("--eval-languages", args.eval_languages, available, where)
    targets = _codes("--target-languages", args.target_languages, available, where)
    model = _model(args.model)
    _pairs_model(model, args)
    _check_stacks(model, stats, args.stats)
    k = _k(model, _one_stack(stats), args.k, mi.PAPER.exclusive_k)
    bands: dict = {}
    if to is None:
        corpus = _corpus(args.corpus, evals, "heldout", args.model)
    else:  # each source language's held-out texts paired with `to`'s: directions "<source>-<to>"
        evals, targets = (_sources(flag, codes, to, True) for flag, codes in
                          (("--eval-languages", evals), ("--target-languages", targets)))
        corpus = _pairs(evals, to, "heldout")
        evals, targets = [f"{s}-{to}" for s in evals], [f"{s}-{to}" for s in targets]
        decoder = stats.get("decoder")
        if decoder is not None and len(decoder.languages) < 2:  # a profile of pairs all into `to`
            from moe_interp.core._layers import THIRD_BANDS

            bands = {"bands": tuple(f"encoder:{band}" for band in THIRD_BANDS)}
            _say(f"the decoder's statistics hold one language ({', '.join(decoder.languages)}), among which every "
                 "expert it uses is 'exclusive': ablating the encoder's bands only (the sources' experts)")
    _say(f"ablation grid with k={k}, {args.controls} usage-matched random control sets per cell, evaluated on the "
         f"held-out split{f' pairs into {to}' if to else ''}; {args.threads_note}")
    result = mi.ablation_grid(model, stats, corpus, evals, targets, path=args.out, k=k, threshold=args.threshold,
                              controls=args.controls, resamples=args.resamples, seed=args.seed, **bands)
    print(result.summary())


def _steer(args: argparse.Namespace) -> None:
    import moe_interp as mi

    to = _pairs_early(args)
    stats = _load_stats(args.stats)
    available, where = _stats_languages(args, stats), f"--stats {args.stats} and the {args.corpus} corpus"
    (target,) = _codes("--target", args.target, available, where)
    if to is None:
        langs = _codes("--languages", args.languages, [l for l in available if l != target],
                       where + " other than --target")
    else:  # source languages: one equal to --target still steers its decoder side (unless --pairs-to is --target)
        langs = _sources("--languages", _codes("--languages", args.languages, available, where), to, True)
    try:
        scales = [float(s) for s in args.scales.split(",")]
    except ValueError:
        _fail(f"--scales {args.scales}: pass comma-separated numbers, e.g. --scales 0,0.02,0.05")
    model = _model(args.model)
    _pairs_model(model, args)
    _check_stacks(model, stats, args.stats)
    k = _k(model, _one_stack(stats), args.k, mi.PAPER.steer_k)
    if to is None:
        dev = _corpus(args.corpus, [target, *langs], "train", args.model)
        test = _corpus(args.corpus, [target, *langs], "heldout", args.model)
    else:  # directions "<source>-<to>": the scale chosen on the train split's pairs, reported on the held-out's
        dev, test = _pairs(langs, to, "train"), _pairs(langs, to, "heldout")
        langs = [f"{s}-{to}" for s in langs]
    _say(f"steering toward {target} with k={k}; {args.threads_note}")
    result = mi.steering_eval(model, stats, dev, test, langs, target=target, path=args.out, k=k,
                              threshold=args.threshold, scales=scales, resamples=args.resamples, seed=args.seed)
    print(result.summary())


def _demo(args: argparse.Namespace) -> None:
    from moe_interp.experiments.demo import run_demo

    languages = _codes("--languages", args.languages, _corpus_languages("udhr"), "the udhr corpus")
    started = time.perf_counter()
    _say(args.threads_note)
    result = run_demo(args.out, languages=languages, quick=args.quick, log=_say)
    print("\n".join(result.findings))
    if args.markdown:  # the README's table is this file, regenerated from a run
        Path(args.markdown).write_text(result.evidence.markdown() + "\n")
        print(f"wrote {args.markdown}")
    print(f"wrote {result.path} in {time.perf_counter() - started:.0f} s")


def _threads(text: str) -> int | str:
    from moe_interp.core._checks import check_int

    if text == "auto":
        return text
    try:
        return check_int("--threads", int(text), 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: pass a number of threads >= 1, or auto") from None


_EXAMPLES = {
    "profile": "example:\n  moe-interp profile --model demo --languages eng,deu,fra --out demo.routing\n"
               "parallel pairs, encoder-decoder (--pairs-to) example:\n"
               "  moe-interp profile --model tiny:switch_transformers --languages deu,fin --pairs-to eng "
               "--out pairs.routing",
    "report": "example:\n  moe-interp report demo.routing --out report.html",
    "ablate": "example:\n  moe-interp ablate --stats demo.routing --eval-languages eng,deu,fra "
              "--target-languages eng,deu\n"
              "parallel pairs, encoder-decoder (--pairs-to) example:\n"
              "  moe-interp ablate --model tiny:switch_transformers --stats pairs.routing --pairs-to eng "
              "--eval-languages deu,fin --target-languages deu",
    "steer": "example:\n  moe-interp steer --stats demo.routing --languages deu,fra\n"
             "parallel pairs, encoder-decoder (--pairs-to) example:\n"
             "  moe-interp steer --model tiny:switch_transformers --stats texts.routing --pairs-to eng "
             "--languages deu,fin",
    "demo": "example:\n  moe-interp demo --languages eng,deu,fra,spa,fin,hun --out report.html",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moe-interp", description="Record, analyse and steer the routers of Mixture-of-Experts "
                     "models (an nnsight plugin).\nOffline start: moe-interp demo",
                     epilog="moe-interp <command> --help shows each command's options with their defaults.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="<command>")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=_threads, default="auto", metavar="N",
                        help="torch threads. auto: TORCH_NUM_THREADS or OMP_NUM_THREADS if set, else the CPUs this "
                             "process may use minus the 1-minute load average, at least 1 (more threads than idle "
                             "cores makes torch many times slower on a shared machine)")

    def add(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=textwrap.fill(description, 88), epilog=_EXAMPLES[name],
                              parents=[common])

    model_help = "hub id, local model directory, 'demo' (the bundled model) or 'tiny:<model_type>'"
    p = add("profile", "model + corpus -> routing statistics file",
            "Run a model over a corpus and save how often each language uses each expert of each MoE layer "
            "(RoutingStats.save); the input of report, ablate and steer.")
    p.add_argument("--model", default="demo", help=model_help)
    _add_corpus(p, "texts to profile")
    p.add_argument("--languages", help="comma-separated ISO 639-3 codes (default: every language of the corpus; "
                   "with --pairs-to, the source languages, by default every one but LANG)")
    _add_pairs_to(p, "the encoder is profiled by source language, the decoder on LANG's texts (OUT/encoder, "
                     "OUT/decoder)")
    p.add_argument("--split", default="train", choices=("train", "heldout", "all"),
                   help="corpus split (train: select experts on it, then ablate/steer evaluate on held-out texts)")
    p.add_argument("--batch-size", type=int, default=16, help="texts per forward pass")
    p.add_argument("--checkpoint", help="resume file for long runs (keyed by content: the model's weights, config "
                   "and tokenizer, the corpus; a changed or damaged file is refused)")
    p.add_argument("--weights-hash", default="full", choices=("full", "sampled"),
                   help="how --checkpoint keys the weights: every byte, or a strided sample of each tensor (cheaper "
                   "for a huge model, blind to an edit of a few numbers)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--out", required=True, help="output directory (RoutingStats.save; an encoder-decoder model: "
                   "OUT/encoder and OUT/decoder, the decoder teacher-forced on the same texts, or with --pairs-to on "
                   "LANG's); checked before profiling")
    p.set_defaults(run=_profile)

    p = add("report", "statistics files -> one self-contained HTML report",
            "Write one HTML page (plotly inlined, opens offline) with the findings and figures of each statistics "
            "file: divergence by layer band, family clustering, layer profile, exclusive and shared experts.")
    p.add_argument("stats", nargs="+", help="directories written by `moe-interp profile`")
    p.add_argument("--title", default="MoE routing report", help="page title")
    p.add_argument("--out", default="report.html", help="HTML file to write")
    p.set_defaults(run=_report)

    p = add("ablate", "layer-band ablation grid of language-exclusive experts",
            "The paper's ablation: each target language's exclusive experts (exclusive among every profiled "
            "language) rerouted in each equal-width third of the layers, bits/byte measured on each evaluation "
            "language's held-out texts against no ablation; the verdict per language and band compares the target "
            "with evaluated languages of its family, of other families, and usage-matched random expert sets "
            "(evaluate a relative of each target, e.g. nld for deu, to tell a family-level effect apart).")
    p.add_argument("--model", default="demo", help=model_help + "; the model --stats was profiled on")
    p.add_argument("--stats", required=True, help="routing statistics from `moe-interp profile` (an encoder-decoder "
                   "model: its --out directory, holding OUT/encoder and OUT/decoder)")
    _add_corpus(p, "the corpus of the held-out texts (the one profiled with --split train)")
    p.add_argument("--eval-languages", required=True, help="comma-separated ISO 639-3 codes to evaluate on "
                   "(with --pairs-to: source languages, evaluated on their held-out pairs into LANG)")
    p.add_argument("--target-languages", required=True, help="comma-separated codes whose exclusive experts are "
                   "ablated (with --pairs-to: source languages; a direction ablates its source's encoder experts and "
                   "LANG's decoder experts)")
    _add_pairs_to(p, "bits/byte of each held-out pair's target given its source; --stats from a profile with "
                     "--pairs-to (the decoder then knows LANG only, so the encoder's bands are ablated) or of plain "
                     "texts (both stacks)")
    p.add_argument("--k", type=int, help="experts kept per language and layer (default: the paper's 15 of 128 "
                                         "experts scaled to the model, at least its top-k)")
    p.add_argument("--threshold", type=float, default=0.4, help="share of an expert's use above which it is exclusive")
    p.add_argument("--controls", type=int, default=20,
                   help="usage-matched random expert sets per cell (the control; 19 or more can pass its rank test)")
    _add_resamples(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the control sets and the bootstrap")
    p.add_argument("--out", default="ablation.jsonl",
                   help="results file (resumable; cells are keyed by model, texts and ablation content)")
    p.set_defaults(run=_ablate)

    p = add("steer", "routing-guided steering evaluation with confidence intervals",
            "The paper's steering: raise the router logits of experts each language shares with --target, choose "
            "the scale on the train split, report per-language bits/byte gains on the held-out split with "
            "bootstrap 95% intervals.")
    p.add_argument("--model", default="demo", help=model_help + "; the model --stats was profiled on")
    p.add_argument("--stats", required=True, help="routing statistics from `moe-interp profile` (an encoder-decoder "
                   "model: its --out directory, holding OUT/encoder and OUT/decoder)")
    _add_corpus(p, "the corpus profiled with --split train (train split: choose the scale; heldout: report)")
    p.add_argument("--target", default="eng", help="the language whose shared experts are steered toward")
    p.add_argument("--languages", required=True, help="comma-separated ISO 639-3 codes to steer (with --pairs-to: "
                   "source languages)")
    _add_pairs_to(p, "each side is steered toward what it shares with --target in its own stack's statistics, a side "
                     "already in --target not steered; --stats should hold --target in the stacks it steers (a "
                     "profile of plain texts holds every language in both)")
    p.add_argument("--scales", default="0,0.02,0.05,0.1,0.2", help="comma-separated steering scales to choose from")
    p.add_argument("--k", type=int, help="experts kept per language and layer (default: the paper's 20 of 128 "
                                         "experts scaled to the model, at least its top-k)")
    p.add_argument("--threshold", type=float, default=0.7, help="every language's share of a steered expert stays below it")
    _add_resamples(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--out", default="steering.jsonl",
                   help="results file (resumable; cells are keyed by model, texts and steer content)")
    p.set_defaults(run=_steer)

    p = add("demo", "the whole pipeline on the bundled demo model and corpus -> report.html",
            "Measure the demo's claims on the bundled demo model, each next to its controls: family structure of "
            "routing (middle band, and per layer) against three random-init twins and exact byte n-gram baselines, "
            "with intervals over languages; ablation of language-exclusive experts per band against the target's "
            "relatives, other families and usage-matched random sets; steering toward English-shared experts as a "
            "dose-response (routing moved on the steered layers, outcome with its interval); expert load and health "
            "(experts never chosen, load against uniform) and co-activation, each beside a random-init twin. "
            "Experts and scales are chosen on the train split, everything is reported on held-out texts with 95% intervals, every verdict "
            "worded by a rule; one HTML report. Offline; its time on 2 CPU cores: benchmarks/RESULTS.md.")
    p.add_argument("--out", default="report.html", help="HTML report to write")
    p.add_argument("--languages", help="comma-separated ISO 639-3 codes (default: the demo model's 55)")
    p.add_argument("--quick", action="store_true", help="a smaller run (tests)")
    p.add_argument("--markdown", help="also write the claims table as Markdown to this file (the README's table)")
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `moe-interp`.

    ```python
    >>> import os, tempfile
    >>> from moe_interp.cli import main
    >>> out = os.path.join(tempfile.mkdtemp(), "tiny.routing")
    >>> main(["profile", "--model", "tiny:qwen3_moe", "--languages", "eng,deu", "--out", out])
    wrote .../tiny.routing: RoutingStats(languages=[eng, deu], layers=4, experts=8, top_k=2, tokens=...)
    0

    ```
    """
    from moe_interp.core._threads import set_threads

    args = build_parser().parse_args(argv)
    _refuse_file_options_on_udhr(args)
    threads, why = set_threads(None if args.threads == "auto" else args.threads)
    args.threads_note = f"{threads} torch thread{'s' * (threads > 1)} ({why})"
    try:
        args.run(args)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError, TypeError) as error:
        _fail(str(error).strip("'\""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
