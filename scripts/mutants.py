"""Mutation testing of the core modules: do the tests fail when the code is wrong?

A curated list of single-change mutants (`MUTANTS` below: a flipped comparison, an
off-by-one, a wrong axis, a dropped mask, swapped arguments, a wrong constant, a removed
check, a wrong default), each applied alone to a fresh copy of the repository in a
temporary directory (the checkout itself is never changed), then the fast test selection
named for it is run there (`python -m pytest -x -q -p no:randomly <selection>`, doctests of
the module included where named). The copy is of one commit (`--rev`, default `HEAD`:
nobody's uncommitted edits enter a run; `--worktree` copies the working tree's tracked files
instead), snapshotted once per run, so the unmutated baseline and every mutant see the same
tree. A mutant is

- `caught`: the selection failed (or could not even import the mutated code: the unmutated
  baseline passed on the same tree),
- `survived`: the selection passed, so the tests cannot tell the mutant from the real code,
- `stale`: its source snippet is no longer in the file (the code moved: update the list),
- `timeout`: the selection ran past its limit (not counted as caught),
- `baseline-failed`: the selection fails on the unmutated copy too, so it proves nothing.

Score = caught / (mutants neither stale, baseline-failed nor listed as equivalent);
equivalent mutants (no test can tell them apart: the behaviour is the same) are listed with
the reason and left out of the score. Each row records which test caught the mutant, and
whether that was a doctest.

Run (from the repository root, with the project's virtual environment):

    OMP_NUM_THREADS=1 nice -n 10 python scripts/mutants.py           # every mutant, one at a time
    python scripts/mutants.py --list                                 # the mutants, nothing run
    python scripts/mutants.py --only divergence,evidence             # some modules (or mutant ids)
    python scripts/mutants.py --before                               # without tests/test_mutants_*.py

How long: each mutant costs one pytest start (~8 s of imports) plus its selection: 8-20 s a
mutant on 2 shared cores, ~55 s for the fingerprint's (its selection runs the profile and
experiment resume tests). The whole list (100 mutants over 16 modules), with the unmutated
baseline run of each of its 21 selections, took 28 minutes in three `--only` runs of `-j 1`
(2 cores shared with other work). `-j N` runs N mutants at once (each in its own copy);
`--only <module>` takes a few minutes.

Results go to `benchmarks/mutation.json` (merged: `--only` updates its mutants' rows) and
are rendered to `benchmarks/MUTATION.md` (table, score, survivors and why). `--before`
keeps its results apart, as the score the tests had before `tests/test_mutants_*.py`
(the tests added for survivors) existed. A new test file takes part once committed (or with
`--worktree`, once `git add`ed). Every run checks, once, that the copy's `moe_interp` is the
one imported (not the editable install), and runs each distinct selection unmutated first.
"""

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDED_TESTS = "tests/test_mutants_"  # the tests written for survivors (dropped by --before)

# short names of the modules under test (for --only and the table)
MODULES = {
    "moe_interp/core/_counts.py": "counts",
    "moe_interp/core/_checks.py": "checks",
    "moe_interp/core/_files.py": "files",
    "moe_interp/core/_expert_set.py": "expert_set",
    "moe_interp/core/_fingerprint.py": "fingerprint",
    "moe_interp/runtime/_kernels.py": "kernels",
    "moe_interp/runtime/_edits.py": "edits",
    "moe_interp/runtime/_compile.py": "compile",
    "moe_interp/runtime/_interventions.py": "interventions",
    "moe_interp/runtime/_shipping.py": "shipping",
    "moe_interp/runtime/_router_view.py": "router_view",
    "moe_interp/analysis/_expert_sets.py": "expert_sets",
    "moe_interp/analysis/_divergence.py": "divergence",
    "moe_interp/analysis/_evidence.py": "evidence",
    "moe_interp/analysis/_bootstrap.py": "bootstrap",
    "moe_interp/arch/_verify.py": "verify",
}


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One single change: in `file`, the one occurrence of `find` becomes `replace`; `tests`
    is the pytest selection that should catch it (paths under `moe_interp/` are that module's
    doctests); `equivalent`: why no test can catch it (left out of the score); `left`: why a
    mutant that survives is left without a test (it stays in the score)."""

    id: str
    file: str
    find: str
    replace: str
    tests: str
    kind: str
    what: str
    equivalent: str | None = None
    left: str | None = None

    @property
    def module(self) -> str:
        return MODULES.get(self.file, Path(self.file).stem)


# -- test selections (fast: the tests that exercise the module, not the suite) ----------------------
# paths under moe_interp/ are that module's doctests
COUNTS = ("tests/test_stats_files.py tests/test_analysis.py tests/test_mutants_counts.py moe_interp/core/_counts.py "
          "-k 'not killed'")
COUNTS_FILES = ("tests/test_stats_files.py tests/test_analysis.py tests/test_mutants_counts.py "
                "moe_interp/core/_counts.py")
EXPERT_SET = ("tests/test_analysis.py tests/test_mutants_analysis.py moe_interp/core/_expert_set.py "
              "moe_interp/analysis/_expert_sets.py")
EXPERT_SETS = "tests/test_analysis.py tests/test_mutants_analysis.py moe_interp/analysis/_expert_sets.py"
DIVERGENCE = "tests/test_analysis.py tests/test_mutants_analysis.py moe_interp/analysis/_divergence.py"
EVIDENCE = ("tests/test_evidence.py tests/test_inference.py tests/test_mutants_analysis.py "
            "moe_interp/analysis/_evidence.py")
BOOTSTRAP = "tests/test_analysis.py tests/test_mutants_analysis.py moe_interp/analysis/_bootstrap.py"
VERIFY = ("tests/test_arch.py tests/test_mutants_verify.py moe_interp/arch/_verify.py "
          "-k 'first_trace or registered or verify or _verify'")
# the shared number checks (core/_checks.py): the selection of the module whose check moved there,
# with the checks' own doctests
CHECKS_COUNTS = COUNTS.replace(" -k", " moe_interp/core/_checks.py -k")
CHECKS_EXPERT_SET = EXPERT_SET + " moe_interp/core/_checks.py"
CHECKS_BOOTSTRAP = BOOTSTRAP + " moe_interp/core/_checks.py"
# the checksummed result directory (core/_files.py) RoutingCounts.save/load write and read through
FILES_COUNTS = COUNTS.replace(" -k", " tests/test_files.py moe_interp/core/_files.py -k")
FILES_COUNTS_FILES = COUNTS_FILES + " tests/test_files.py moe_interp/core/_files.py"

EDITS = ("tests/test_interventions.py tests/test_edits.py tests/test_readouts.py moe_interp/runtime/_edits.py "
         "tests/test_mutants_kernels.py -k 'edits or qwen3_moe or deepseek_v3 or compose or scale_zero or (readouts and drop)'")
KERNELS_RECORD = ("tests/test_record.py tests/test_reader.py tests/test_readouts.py moe_interp/runtime/_kernels.py "
                  "tests/test_mutants_kernels.py -k 'kernels or reader or qwen3_moe or invoke or tally or totals or "
                  "generate or finished or per_token or (readouts and router_record)'")
KERNELS_SEQ2SEQ = "tests/test_seq2seq.py tests/test_mutants_kernels.py"
_RUNTIME_TESTS = "tests/test_interventions.py tests/test_edits.py tests/test_mutants_interventions.py"
COMPILE = f"{_RUNTIME_TESTS} moe_interp/runtime/_compile.py"
INTERVENTIONS = f"{_RUNTIME_TESTS} moe_interp/runtime/_interventions.py"
SHIPPING = f"{_RUNTIME_TESTS} moe_interp/runtime/_shipping.py"
FINGERPRINT = ("tests/test_fingerprint.py tests/test_profile.py tests/test_experiment.py "
               "moe_interp/core/_fingerprint.py tests/test_mutants_fingerprint.py "
               "-k '(fingerprint or checkpoint or resum or key or differ or corpus) and not flipped_bit'")
               # the bit-flip sweeps take 35 s and test the checksum, not these
ROUTER_VIEW = ("tests/test_router_view.py tests/test_reader.py moe_interp/runtime/_router_view.py "
               "tests/test_mutants_router_view.py -k 'not remote'")

M = Mutant
MUTANTS: list[Mutant] = [
    # -- counts ----------------------------------------------------------------------------------
    M("counts.frequency-clamp", "moe_interp/core/_counts.py",
      "self.tokens.clamp(min=1).double()", "self.tokens.clamp(min=0).double()", COUNTS,
      "wrong constant", "a language without tokens gets nan frequencies instead of 0"),
    M("counts.distribution-divisor", "moe_interp/core/_counts.py",
      "return self.frequency() / self.top_k", "return self.frequency() / self.num_experts", COUNTS,
      "wrong constant", "distribution divides by the number of experts, not top_k"),
    M("counts.check-count-low", "moe_interp/core/_checks.py",
      "if index is None or index < low or (", "if index is None or index <= low or (", CHECKS_COUNTS,
      "off-by-one", "num_experts = 1 / top_k = 1 refused"),
    M("counts.check-count-high", "moe_interp/core/_checks.py",
      "(high is not None and index > high):", "(high is not None and index > high + 1):", CHECKS_COUNTS,
      "off-by-one", "top_k = num_experts + 1 accepted"),
    M("counts.negative-check-dropped", "moe_interp/core/_counts.py",
      "bad = (value < 0) if integral else", "bad = (value < -1) if integral else", COUNTS,
      "off-by-one", "a count of -1 accepted"),
    M("counts.item-language-bound", "moe_interp/core/_counts.py",
      "if n_items and int(stats.item_language.max()) >= n_lang:",
      "if n_items and int(stats.item_language.max()) > n_lang:", COUNTS,
      "flipped comparison", "an item of language n_lang (one past the end) accepted"),
    M("counts.item-tokens-sum", "moe_interp/core/_counts.py",
      "int(stats.item_tokens[mine].sum()) == int(stats.tokens[lang])",
      "int(stats.item_tokens[mine].sum()) <= int(stats.tokens[lang])", COUNTS,
      "flipped comparison", "per-item tokens may add up to less than the language's tokens"),
    M("counts.merge-relabel", "moe_interp/core/_counts.py",
      "torch.cat([result.item_language, relabel[other.item_language]])",
      "torch.cat([result.item_language, other.item_language])", COUNTS,
      "dropped mask", "merge keeps the other stats' item language positions un-relabelled"),
    M("counts.merge-language-order", "moe_interp/core/_counts.py",
      "languages = list(result.languages) + [l for l in other.languages if l not in result.languages]",
      "languages = [l for l in other.languages if l not in result.languages] + list(result.languages)", COUNTS,
      "swapped arguments", "merge puts the other stats' new languages first"),
    M("counts.select-items-remap", "moe_interp/core/_counts.py",
      "remap[li] = torch.arange(len(li))", "remap[li] = li", COUNTS,
      "wrong index", "select keeps item_language as positions in the old language order"),
    M("counts.from-paper-top-k-round", "moe_interp/core/_counts.py",
      "top_k = int(round(float(per_token.mean())))", "top_k = int(float(per_token.mean()))", COUNTS,
      "wrong rounding", "from_paper truncates the mean experts per token instead of rounding"),
    M("counts.from-paper-experts", "moe_interp/core/_counts.py",
      "experts = num_experts or 1 + max(", "experts = num_experts or max(", COUNTS,
      "off-by-one", "from_paper reads one expert fewer than the files hold"),
    M("counts.checksum-compare", "moe_interp/core/_files.py",
      'if checksum(stored["moe_interp"], tensors) != stored.get("sha256"):',
      'if checksum(stored["moe_interp"], tensors) != stored.get("sha256") and False:', FILES_COUNTS,
      "removed check", "the sha256 of a stats file is not verified"),
    M("counts.overwrite-guard", "moe_interp/core/_files.py",
      "and not (path / meta_file).exists()):", "or not (path / meta_file).exists()):", FILES_COUNTS_FILES,
      "flipped condition", "overwrite=True refuses a directory save wrote if meta.json is missing"),

    # -- expert_set -----------------------------------------------------------------------------
    M("expert_set.negative-expert", "moe_interp/core/_expert_set.py",
      "    if index is None or index < 0:\n", "    if index is None or index < -1:\n", EXPERT_SET,
      "off-by-one", "expert index -1 accepted (wraps round to the last expert)"),
    M("expert_set.bool-expert", "moe_interp/core/_checks.py",
      "    if isinstance(value, bool):\n        return None\n", "", CHECKS_EXPERT_SET,
      "removed check", "True / False accepted as experts 1 / 0 (as_index: as any int)"),
    M("expert_set.mean-strength-divisor", "moe_interp/core/_expert_set.py",
      "for s in v.values()) / self.size", "for s in v.values()) / len(self)", EXPERT_SET,
      "wrong constant", "mean strength divides by the number of layers, not pairs"),
    M("expert_set.eq-strengths", "moe_interp/core/_expert_set.py",
      "tuple(sorted(v)) for k, v in other.items()} and (\n"
      "            self.strengths == getattr(other, \"strengths\", None))",
      "tuple(sorted(v)) for k, v in other.items()}", EXPERT_SET,
      "removed check", "sets with different strengths compare equal"),
    M("expert_set.empty-layers", "moe_interp/core/_expert_set.py",
      "            if values:\n                frozen[layer] = values",
      "            if True:\n                frozen[layer] = values", EXPERT_SET,
      "removed check", "layers with no experts are kept (len counts them)"),
    M("expert_set.finite-strength", "moe_interp/core/_checks.py",
      "if not math.isfinite(number):", "if math.isnan(number):", CHECKS_EXPERT_SET,
      "removed check", "an infinite strength accepted"),
    M("expert_set.scaled-k-ceil", "moe_interp/core/_expert_set.py",
      "math.ceil(paper_k * num_experts / self.num_experts)", "int(paper_k * num_experts / self.num_experts)",
      EXPERT_SET, "wrong rounding", "the scaled default k rounds down"),
    M("expert_set.check-k-upper", "moe_interp/core/_expert_set.py",
      "k, 1, num_experts)", "k, 1, num_experts - 1)", EXPERT_SET,
      "off-by-one", "k = num_experts refused"),

    # -- expert sets (analysis) -----------------------------------------------------------------
    M("expert_sets.shares-axis", "moe_interp/analysis/_expert_sets.py",
      "return kept / (kept.sum(0, keepdim=True) + EPS)", "return kept / (kept.sum(-1, keepdim=True) + EPS)",
      EXPERT_SETS, "wrong axis", "shares normalised over experts instead of languages"),
    M("expert_sets.topk-off-by-one", "moe_interp/analysis/_expert_sets.py",
      "top = torch.topk(freq, k, dim=-1).indices", "top = torch.topk(freq, max(1, k - 1), dim=-1).indices",
      EXPERT_SETS, "off-by-one", "each language keeps k - 1 experts"),
    M("expert_sets.exclusive-strict", "moe_interp/analysis/_expert_sets.py",
      "return p > check_threshold(threshold)", "return p >= check_threshold(threshold)", EXPERT_SETS,
      "flipped comparison", "exclusive rule not strict"),
    M("expert_sets.shared-used", "moe_interp/analysis/_expert_sets.py",
      "return (p > 0).any(0) & (p < threshold).all(0)", "return (p < threshold).all(0)", EXPERT_SETS,
      "dropped mask", "shared experts include experts no language uses"),
    M("expert_sets.shared-strength-language", "moe_interp/analysis/_expert_sets.py",
      "strengths[layer] = {e: float(p[0, i, e]) for e in chosen}",
      "strengths[layer] = {e: float(p[-1, i, e]) for e in chosen}", EXPERT_SETS,
      "wrong index", "shared strength is the last language's share, not the first's"),
    M("expert_sets.targets-mean", "moe_interp/analysis/_expert_sets.py",
      "p[[among.index(t) for t in targets]].sum(0, keepdim=True)",
      "p[[among.index(t) for t in targets]].mean(0, keepdim=True)", EXPERT_SETS,
      "wrong reduction", "several targets: their shares averaged instead of summed"),
    M("expert_sets.repeat-check", "moe_interp/analysis/_expert_sets.py",
      "repeated = sorted({l for l in languages if languages.count(l) > 1})",
      "repeated = sorted({l for l in languages if languages.count(l) > 2})", EXPERT_SETS,
      "off-by-one", "a language listed twice is accepted (its share counted twice)"),
    M("expert_sets.among-layers", "moe_interp/analysis/_expert_sets.py",
      "selected = shared_mask(p, threshold)\n", "selected = shared_mask(p[:1], threshold)\n", EXPERT_SETS,
      "wrong index", "shared rule judged on the first language only"),

    # -- divergence -----------------------------------------------------------------------------
    M("divergence.js-base", "moe_interp/analysis/_divergence.py",
      "/ (2 * np.log(2))", "/ 2", DIVERGENCE,
      "wrong constant", "JS in nats instead of bits"),
    M("divergence.cosine-one-minus", "moe_interp/analysis/_divergence.py",
      "return 1.0 - unit @ unit.T", "return unit @ unit.T", DIVERGENCE,
      "wrong formula", "cosine similarity returned as the distance"),
    M("divergence.hellinger-root", "moe_interp/analysis/_divergence.py",
      "return np.sqrt(np.clip(1.0 - root @ root.T, 0.0, None))", "return np.clip(1.0 - root @ root.T, 0.0, None)",
      DIVERGENCE, "wrong formula", "squared Hellinger distance"),
    M("divergence.kl-one-sided", "moe_interp/analysis/_divergence.py",
      "return (own[:, None] - cross) + (own[None, :] - cross.T)", "return (own[:, None] - cross)", DIVERGENCE,
      "dropped term", "kl_sym is half the symmetric KL"),
    M("divergence.nan-diagonal", "moe_interp/analysis/_divergence.py",
      "out[:, idx, idx] = np.where(valid.T, 0.0, np.nan)", "out[:, idx, idx] = 0.0", DIVERGENCE,
      "dropped mask", "a language without tokens gets 0 on the diagonal instead of nan"),
    M("divergence.band-nanmean", "moe_interp/analysis/_divergence.py",
      "for layer in members]].nanmean(0)", "for layer in members]].mean(0)", DIVERGENCE,
      "dropped mask", "band average is nan when one layer is nan"),
    M("divergence.entropy-log-base", "moe_interp/analysis/_divergence.py",
      "return -terms.sum(-1) / float(np.log(stats.num_experts))",
      "return -terms.sum(-1) / float(np.log(stats.num_experts + 1))", DIVERGENCE,
      "off-by-one", "entropy normalised by log(E + 1)"),
    M("divergence.renormalise", "moe_interp/analysis/_divergence.py",
      "return d / d.sum(-1, keepdims=True)  #", "return d / 1.0  #", DIVERGENCE,
      "dropped step", "distributions not renormalised when counts do not sum to top_k x tokens"),
    M("divergence.offdiagonal-mean", "moe_interp/analysis/_divergence.py",
      "return matrix[..., mask].nanmean(-1) if n > 1", "return matrix.flatten(-2).nanmean(-1) if n > 1",
      DIVERGENCE, "dropped mask", "mean over all pairs, the zero diagonal included"),

    # -- evidence -------------------------------------------------------------------------------
    M("evidence.group-unit-items", "moe_interp/analysis/_evidence.py",
      "picked = rng.integers(0, len(groups), (resamples, len(groups)))",
      "picked = np.tile(np.arange(len(groups)), (resamples, 1))", EVIDENCE,
      "removed step", "unit='group' keeps the groups: a language-level interval shrinks to the text level"),
    M("evidence.duplicate-pairs", "moe_interp/analysis/_evidence.py",
      "valid = origin[iu[0]] != origin[iu[1]]", "valid = np.ones(len(iu[0]), dtype=bool)", EVIDENCE,
      "dropped mask", "a language drawn twice counts as a same-family pair of divergence 0"),
    M("evidence.p-value-twice", "moe_interp/analysis/_evidence.py",
      "return float(min(1.0, 2 * min(", "return float(min(1.0, 1 * min(", EVIDENCE,
      "wrong constant", "one-sided bootstrap p-value"),
    M("evidence.p-value-ties", "moe_interp/analysis/_evidence.py",
      "2 * min((samples <= 0).mean(), (samples >= 0).mean())",
      "2 * min((samples < 0).mean(), (samples > 0).mean())", EVIDENCE,
      "flipped comparison", "replicates equal to 0 count on neither side"),
    M("evidence.resample-off-by-one", "moe_interp/analysis/_evidence.py",
      "rng.integers(0, len(g), (resamples, len(g)))", "rng.integers(0, max(1, len(g) - 1), (resamples, len(g)))",
      EVIDENCE, "off-by-one", "the last item of each group is never drawn"),
    M("evidence.permutation-ties", "moe_interp/analysis/_evidence.py",
      "(1 + (shuffled >= observed).sum(0))", "(1 + (shuffled > observed).sum(0))", EVIDENCE,
      "flipped comparison", "permutations equal to the observed value not counted"),
    M("evidence.difference-sign", "moe_interp/analysis/_evidence.py",
      "estimate = float(self.estimate[0, s] - self.estimate[m, s])",
      "estimate = float(self.estimate[m, s] - self.estimate[0, s])", EVIDENCE,
      "swapped arguments", "difference is model minus trained"),
    M("evidence.linkage-method", "moe_interp/analysis/_evidence.py",
      'method="average"', 'method="complete"', EVIDENCE,
      "wrong default", "complete-linkage tree instead of average"),
    M("evidence.articles-paired", "moe_interp/analysis/_evidence.py",
      "self.articles = len(set(self.sizes)) == 1", "self.articles = False", EVIDENCE,
      "removed branch", "parallel corpora resampled within languages instead of by article"),

    # -- bootstrap ------------------------------------------------------------------------------
    M("bootstrap.alpha-half", "moe_interp/analysis/_bootstrap.py",
      "alpha = (1 - level) / 2", "alpha = 1 - level", BOOTSTRAP,
      "wrong constant", "one-sided percentile interval"),
    M("bootstrap.draw-within-language", "moe_interp/analysis/_bootstrap.py",
      "members = (stats.item_language == lang).nonzero().flatten()", "members = torch.arange(n_items)",
      BOOTSTRAP, "dropped mask", "items drawn from every language"),
    M("bootstrap.draw-count", "moe_interp/analysis/_bootstrap.py",
      "torch.randint(len(members), (len(members),), generator=generator)",
      "torch.randint(len(members), (max(1, len(members) - 1),), generator=generator)", BOOTSTRAP,
      "off-by-one", "one item fewer drawn per language"),
    M("bootstrap.estimate-on-resample", "moe_interp/analysis/_bootstrap.py",
      "estimate = torch.as_tensor(function(stats)).double()",
      "estimate = torch.as_tensor(function(resample(stats, generator))).double()", BOOTSTRAP,
      "wrong argument", "the estimate is one more replicate, not the full data"),
    M("bootstrap.level-check", "moe_interp/core/_checks.py",
      "not 0 < level < 1:", "not 0 < level <= 1:", CHECKS_BOOTSTRAP,
      "off-by-one", "level = 1 accepted"),

    # -- verify ---------------------------------------------------------------------------------
    M("verify.auto-only", "moe_interp/arch/_verify.py",
      'if spec.family != "auto":\n        return None', 'if spec.family == "":\n        return None', VERIFY,
      "flipped condition", "registered adapters are checked too"),
    M("verify.shown-mask", "moe_interp/arch/_verify.py",
      "if not _same(_per_token(indices, tokens)[shown], received[shown]):",
      "if not _same(_per_token(indices, tokens), received):", VERIFY,
      "dropped mask", "tokens that show no choice (zero rows of a dense dispatch) are judged"),
    M("verify.loop-check", "moe_interp/arch/_verify.py",
      "if calls[layer] != 1:", "if calls[layer] > 2:", VERIFY,
      "removed check", "a layer whose experts ran twice in one forward is accepted"),
    M("verify.first-forward-only", "moe_interp/arch/_verify.py",
      "def first_forward_over(*_):\n            self.done = True",
      "def first_forward_over(*_):\n            self.done = False", VERIFY,
      "wrong constant", "calls of later forwards are recorded too"),
    M("verify.sentinel-column", "moe_interp/arch/_verify.py",
      ".long().cpu().clamp(min=-1) + 1", ".long().cpu().clamp(min=0)", VERIFY,
      "off-by-one", "negative 'no expert' sentinels counted as expert 0"),
    M("verify.missing-layer", "moe_interp/arch/_verify.py",
      "for layer in sorted(set(calls) - set(readout)):", "for layer in sorted(set(calls) & set()):", VERIFY,
      "removed check", "a routed layer moe_interp does not read is accepted"),
    M("verify.dense-rows", "moe_interp/arch/_verify.py",
      "rows = tensors[0].detach().reshape(-1, tokens, tensors[0].shape[-1])",
      "rows = tensors[0].detach().reshape(tokens, -1, tensors[0].shape[-1]).transpose(0, 1)", VERIFY,
      "wrong axis", "a dense dispatch read token-major instead of expert-major"),

    # -- kernels (the in-trace code: runtime/_kernels; the edit kinds' apply in runtime/_edits) --------------------------------------------------------------
    M("kernels.relative-abs", "moe_interp/runtime/_edits.py",
      "return z + scale * payload.to(z.dtype) * z.abs()", "return z + scale * payload.to(z.dtype) * z", EDITS,
      "dropped abs", "relative steer multiplies by z, not |z| (flips sign on negative logits)"),
    M("kernels.reroute-clamp", "moe_interp/runtime/_edits.py",
      "max(NEG_LOGIT, torch.finfo(z.dtype).min)", "min(NEG_LOGIT, torch.finfo(z.dtype).min)", EDITS,
      "flipped comparison", "rerouted logits set to the dtype's minimum instead of -1e9"),
    M("kernels.drop-mask-inverted", "moe_interp/runtime/_edits.py",
      "return weights.masked_fill(payload[indices], 0)",
      "return weights.masked_fill(~payload[indices], 0)", EDITS,
      "flipped mask", "drop zeroes every expert but the dropped ones"),
    M("kernels.current-columns", "moe_interp/runtime/_kernels.py",
      "else mask[:, -seq:] > 0", "else mask[:, :seq] > 0", KERNELS_RECORD,
      "wrong slice", "a decoding step judges padding by the mask's first columns, not its last"),
    M("kernels.position-from-zero", "moe_interp/runtime/_kernels.py",
      "position = mask.long().cumsum(-1)[:, -seq:] - 1", "position = mask.long().cumsum(-1)[:, -seq:]",
      KERNELS_RECORD, "off-by-one", "per-token positions start at 1"),
    M("kernels.invoke-rows", "moe_interp/runtime/_kernels.py",
      "row_group[start : start + size] = g", "row_group[start : start + size - 1] = g", KERNELS_RECORD,
      "off-by-one", "an invoke's last row is counted as padding"),
    M("kernels.finished-sticky", "moe_interp/runtime/_kernels.py",
      'finished = store["finished"] = store["finished"] | hit.any(-1)',
      'finished = store["finished"] = hit.any(-1)', KERNELS_RECORD,
      "dropped state", "a row that ended is counted again at steps whose input holds no EOS"),
    M("kernels.refed-columns", "moe_interp/runtime/_kernels.py",
      "refed = min(max(before + seq - length, 0), seq)", "refed = 0", KERNELS_RECORD,
      "removed step", "without a cache, every step recounts the whole sequence"),
    M("kernels.tally-zero-bin", "moe_interp/runtime/_kernels.py",
      "bins = torch.where(bins >= 0, bins, size)", "bins = torch.where(bins > 0, bins, size)", KERNELS_RECORD,
      "flipped comparison", "bin 0 (group 0 / expert 0) falls into the padding slot"),
    M("kernels.no-expert-slot", "moe_interp/runtime/_kernels.py",
      "bins = torch.where(indices >= 0, base + indices, spare).reshape(-1)",
      "bins = (base + indices).reshape(-1)", KERNELS_RECORD,
      "dropped mask", "a slot that reached no expert (-1) is counted on the previous expert"),
    M("kernels.fold-mass", "moe_interp/runtime/_kernels.py",
      'store["gate_mass"] += totals["mass"].view(shape)[:, :groups].transpose(0, 1)',
      'store["gate_mass"] += totals["count"].view(shape)[:, :groups].transpose(0, 1)', KERNELS_RECORD,
      "swapped arguments", "gate mass takes the counts"),
    M("kernels.compact-group-zero", "moe_interp/runtime/_kernels.py",
      'real = table["group"] >= 0', 'real = table["group"] > 0', KERNELS_RECORD,
      "flipped comparison", "per-token records of group 0 dropped as padding"),
    M("kernels.profile-mass-language", "moe_interp/runtime/_kernels.py",
      'acc["gate_mass"].index_add_(0, languages.to(mass.device), mass)',
      'acc["gate_mass"].index_add_(0, torch.arange(len(languages), device=mass.device), mass)', KERNELS_RECORD,
      "wrong index", "a profile's gate mass goes to the text's position in the batch, not its language"),
    M("kernels.encoder-once", "moe_interp/runtime/_kernels.py",
      'if entry.once and store["forwards"] > 0:', 'if entry.once and store["forwards"] > 1:', KERNELS_SEQ2SEQ,
      "off-by-one", "generate counts the encoder again at its first decoding step"),

    # -- interventions (runtime/_interventions: validate; _compile: the plan; _shipping: the held check) ---------------------------------------------------------
    M("interventions.reroute-limit", "moe_interp/runtime/_compile.py",
      "if removed > allowed:", "if removed >= allowed:", COMPILE,
      "off-by-one", "rerouting exactly num_experts - top_k experts refused"),
    M("interventions.group-fewest", "moe_interp/runtime/_compile.py",
      "if sum(kept[:topk_group]) < spec.top_k:", "if sum(kept[-topk_group:]) < spec.top_k:", COMPILE,
      "wrong slice", "group-limited check looks at the groups that keep the most experts"),
    M("interventions.group-empty", "moe_interp/runtime/_compile.py",
      "if k > 0)", "if k >= 0)", COMPILE,
      "off-by-one", "wholly ablated groups counted as groups top-k could pick"),
    M("interventions.reroute-last", "moe_interp/runtime/_compile.py",
      "return [edit for edit in edits if edit.kind != REROUTE] + [Edit(REROUTE, mask, 1.0)]",
      "return [Edit(REROUTE, mask, 1.0)] + [edit for edit in edits if edit.kind != REROUTE]", COMPILE,
      "swapped order", "reroute applied before the steers, which can bring the expert back"),
    M("interventions.reroute-union", "moe_interp/runtime/_compile.py",
      "        mask = mask | more\n    _check_reroute", "        mask = mask & more\n    _check_reroute",
      COMPILE, "wrong operator", "two ablations of one layer keep only the experts both name"),
    M("interventions.scale-zero", "moe_interp/runtime/_interventions.py",
      "if self.scale == 0 or not per:", "if not per:", INTERVENTIONS,
      "removed check", "scale 0 still compiles an edit (not bitwise a plain forward)"),
    M("interventions.steer-site", "moe_interp/runtime/_interventions.py",
      "out.append((layer, self.site, Edit(", 'out.append((layer, "logits", Edit(',
      INTERVENTIONS, "wrong default", "site='scores' steers the logits anyway"),
    M("interventions.ablate-site", "moe_interp/runtime/_interventions.py",
      'out.append((layer, "scores", Edit(REROUTE, mask, 1.0)))',
      'out.append((layer, "logits", Edit(REROUTE, mask, 1.0)))', INTERVENTIONS,
      "wrong default", "reroute on DeepSeek-V3 masks the logits, before the selection bias"),
    M("interventions.held-once", "moe_interp/runtime/_shipping.py",
      "for layer, n in zip(layers, used.tolist()) if n}", "for layer, n in zip(layers, used.tolist()) if n > 1}",
      SHIPPING, "off-by-one", "one leaked selection of an ablated expert is not reported"),
    M("interventions.threshold-zero", "moe_interp/runtime/_interventions.py",
      "if not 0 <= threshold <= 1:", "if not 0 < threshold <= 1:", INTERVENTIONS,
      "off-by-one", "RouteSteer threshold 0 refused"),
    M("interventions.steer-default-k", "moe_interp/runtime/_interventions.py",
      'PAPER.steer_k, name="RouteSteer k")', 'PAPER.exclusive_k, name="RouteSteer k")', INTERVENTIONS,
      "wrong default", "RouteSteer's default k scales the exclusive sets' 15, not steering's 20"),

    # -- fingerprint (content keys) -----------------------------------------------------------------
    M("fingerprint.integral-floats", "moe_interp/core/_fingerprint.py",
      'elif isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer()):',
      "elif isinstance(value, numbers.Integral):", FINGERPRINT,
      "removed branch", "1.0 and 1 get different keys"),
    M("fingerprint.list-length", "moe_interp/core/_fingerprint.py",
      'tag(b"l", str(len(value)).encode())', 'tag(b"l")', FINGERPRINT,
      "dropped length prefix", "([1, 2], [3]) and ([1], [2, 3]) get the same key"),
    M("fingerprint.mapping-order", "moe_interp/core/_fingerprint.py",
      "items = sorted(((fingerprint(k), v) for k, v in value.items()), key=lambda item: item[0])",
      "items = [(fingerprint(k), v) for k, v in value.items()]", FINGERPRINT,
      "dropped sort", "equal dicts built in another order get different keys"),
    M("fingerprint.tensor-shape", "moe_interp/core/_fingerprint.py",
      'tag(b"t", f"{flat.dtype}{tuple(value.shape)}".encode())', 'tag(b"t", f"{flat.dtype}".encode())',
      FINGERPRINT, "dropped field", "a [2, 3] and a [3, 2] tensor of the same bytes get the same key"),
    M("fingerprint.missing-part", "moe_interp/core/_fingerprint.py",
      "return [part for part, value in current.items() if stored.get(part) != value]",
      "return [part for part, value in current.items() if stored.get(part, value) != value]", FINGERPRINT,
      "wrong default", "a part missing from a stored key counts as unchanged"),
    M("fingerprint.stats-gate-mass", "moe_interp/core/_fingerprint.py",
      '"top_k", "count", "gate_mass", "tokens",', '"top_k", "count", "tokens",', FINGERPRINT,
      "dropped field", "stats that differ only in gate mass get the same key"),
    M("fingerprint.done-range", "moe_interp/core/_fingerprint.py",
      "not 0 <= done <= total", "not 0 <= done < total", FINGERPRINT,
      "off-by-one", "a finished checkpoint (done == total) refused as damaged"),

    # -- router view ---------------------------------------------------------------------------------
    M("router_view.at-position", "moe_interp/runtime/_router_view.py",
      "return self._entries[self.layers.index(layer)]", "return self._entries[layer]", ROUTER_VIEW,
      "wrong index", "model.moe.at(layer) indexes by position"),
    M("router_view.span-unit", "moe_interp/runtime/_router_view.py",
      "return start * seq, (start + size) * seq", "return start * seq, start * seq + size", ROUTER_VIEW,
      "wrong unit", "an invoke's tokens end after `size` tokens, not `size` rows"),
    M("router_view.hash-copy", "moe_interp/runtime/_router_view.py",
      "return _tokens(pick(value, self.site), self.width, self.rows, self.what).clone()",
      "return _tokens(pick(value, self.site), self.width, self.rows, self.what)", ROUTER_VIEW,
      "removed copy", "a hash layer's logits edited in place reach the model and are not refused"),
    M("router_view.indices-range", "moe_interp/runtime/_router_view.py",
      "if bool(((new < 0) | (new >= self._num_experts)).any()):",
      "if bool(((new < 0) | (new > self._num_experts)).any()):", ROUTER_VIEW,
      "off-by-one", "assigned index num_experts accepted"),
    M("router_view.weights-dropped-slot", "moe_interp/runtime/_router_view.py",
      "if dropping and bool(((indices < 0) & (new != 0)).any()):", "if False:", ROUTER_VIEW,
      "removed check", "a weight assigned to a slot that reached no expert is accepted"),
    M("router_view.splice-order", "moe_interp/runtime/_router_view.py",
      "return torch.cat([current[:start], new, current[stop:]]) if",
      "return torch.cat([new, current[:start], current[stop:]]) if", ROUTER_VIEW,
      "swapped arguments", "an invoke's assigned indices/weights land on the first rows of the batch"),
    M("router_view.block-path", "moe_interp/runtime/_router_view.py",
      'block = model.get(spec.routers[position].rsplit(".", 1)[0])',
      'block = model.get(spec.routers[position].rsplit(".", 2)[0])', ROUTER_VIEW,
      "off-by-one", "model.moe[i].block is the decoder layer, not the MoE block"),
    M("router_view.hash-refusal", "moe_interp/runtime/_router_view.py",
      '        if self.kind == "hash":\n            raise RouterAccessError(self._hash_refusal(what))',
      '        if self.kind == "topk_hash":\n            raise RouterAccessError(self._hash_refusal(what))',
      ROUTER_VIEW, "removed check", "a hash layer's scores read and its logits assigned without refusal"),
]
MUTANTS_BY_ID = {m.id: m for m in MUTANTS}
assert len(MUTANTS_BY_ID) == len(MUTANTS), "mutant ids must be unique"


# -- running ----------------------------------------------------------------------------------------
def _snapshot(destination: Path, rev: str | None) -> None:
    """The repository's tracked files into `destination`: those of commit `rev`, or (`rev=None`)
    the working tree's current contents of the tracked files."""
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
        return
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in names.decode().split("\0"):
        source = ROOT / name
        if not name or not source.is_file():  # deleted in the working tree, or a submodule
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def _environment(copy: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=str(copy))  # the copy, never the editable install, is imported
    env.pop("PYTEST_ADDOPTS", None)
    return env


def _selection(tests: str, copy: Path, before: bool) -> list[str]:
    """The selection's arguments, the module's doctests last (so a mutant whose first failing test
    is a doctest was caught by doctests only); paths missing from the copy (a test file not yet
    written) and, with `before`, the tests added for survivors are dropped."""
    out = []
    for part in shlex.split(tests):
        path = part.split("::")[0]
        is_path = not part.startswith("-") and (path.endswith(".py") or "/" in path) and (not out or out[-1] != "-k")
        if is_path and (not (copy / path).exists() or (before and path.startswith(ADDED_TESTS))):
            continue
        out.append(part)
    if not any(part.endswith(".py") or "::" in part for part in out):  # pytest would run its testpaths: the suite
        raise SystemExit(f"the selection {tests!r} names no file that exists in the copy")
    options = [i for i, part in enumerate(out) if part.startswith("-") or (i and out[i - 1] == "-k")]
    paths = [part for i, part in enumerate(out) if i not in options]
    doctests = [part for part in paths if part.startswith("moe_interp/")]
    return [p for p in paths if p not in doctests] + doctests + [out[i] for i in options]


def _pytest(args: list[str], copy: Path, python: str, timeout: float) -> tuple[str, float, str]:
    """(`passed` / `failed` / `error` / `no-tests` / `timeout`, seconds, first failing test)."""
    command = ["nice", "-n", "10", python, "-m", "pytest", "-x", "-q", "-p", "no:randomly",
               "--hypothesis-seed=0", *args]
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=copy, env=_environment(copy), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # this run's own process group only
        process.communicate()
        return "timeout", time.monotonic() - start, ""
    except BaseException:  # Ctrl-C: its own session does not get the signal, so end it here
        os.killpg(process.pid, signal.SIGKILL)
        raise
    seconds = time.monotonic() - start
    failing = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", output, re.M)
    first = failing[1] if failing else ""
    if process.returncode == 0:
        return "passed", seconds, ""
    if process.returncode == 5:
        return "no-tests", seconds, ""
    if not first:  # 2-4: interrupted, e.g. the code fails to import (conftest, collection)
        error = re.search(r"^E +(\w*Error.*)$", output, re.M)
        first = f"(exit {process.returncode}) " + (error[1] if error else output.strip().splitlines()[-1])[:70]
    return "failed", seconds, first


def _check_import(copy: Path, python: str) -> None:
    found = subprocess.run([python, "-c", "import moe_interp; print(moe_interp.__file__)"], cwd=copy,
                           env=_environment(copy), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(copy.resolve()):
        sys.exit(f"the copy's moe_interp is not the one imported ({found}); fix PYTHONPATH before trusting a score")


def _run_one(mutant: Mutant, args: argparse.Namespace, baseline: dict, snapshot: Path) -> dict:
    row = {"id": mutant.id, "module": mutant.module, "kind": mutant.kind, "seconds": 0.0, "caught_by": ""}
    with tempfile.TemporaryDirectory(prefix="mutant-") as folder:
        copy = Path(folder) / "repo"
        shutil.copytree(snapshot, copy, symlinks=True)
        path = copy / mutant.file
        source = path.read_text() if path.is_file() else ""
        found = source.count(mutant.find)
        if found != 1:
            row["result"] = "stale" if found == 0 else f"ambiguous ({found} matches)"
            return row
        selection = _selection(mutant.tests, copy, args.before)
        key = " ".join(selection)
        if baseline.get(key, {}).get("status", "passed") != "passed":
            row["result"] = "baseline-failed"
            return row
        limit = args.timeout or max(120.0, 4 * baseline.get(key, {}).get("seconds", 150.0))
        path.write_text(source.replace(mutant.find, mutant.replace))
        status, seconds, first = _pytest(selection, copy, args.python, limit)
    row["seconds"] = round(seconds, 1)
    row["result"] = {"failed": "caught", "passed": "survived"}.get(status, status)
    row["caught_by"] = first
    row["doctest"] = first.startswith("moe_interp/")
    return row


def _baselines(mutants: list[Mutant], args: argparse.Namespace, snapshot: Path) -> dict:
    """Each distinct selection once on the unmutated copy: it must pass, and its time sets the limit."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="mutant-baseline-") as folder:
        copy = Path(folder) / "repo"
        shutil.copytree(snapshot, copy, symlinks=True)
        _check_import(copy, args.python)
        for tests in dict.fromkeys(m.tests for m in mutants):
            selection = _selection(tests, copy, args.before)
            key = " ".join(selection)
            if key in out or args.no_baseline:
                continue
            status, seconds, first = _pytest(selection, copy, args.python, args.timeout or 900)
            out[key] = {"status": status, "seconds": round(seconds, 1), "first": first}
            print(f"baseline {status:>8} {seconds:6.1f}s  {key}" + (f"  ({first})" if first else ""), flush=True)
    return out


def _git(*command: str) -> str:
    return subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def score(rows: dict) -> tuple[int, int]:
    """(caught, scored): equivalent, stale and baseline-failed mutants are not scored."""
    scored = [r for i, r in rows.items() if i in MUTANTS_BY_ID and not MUTANTS_BY_ID[i].equivalent
              and r["result"] in ("caught", "survived", "timeout")]
    return sum(r["result"] == "caught" for r in scored), len(scored)


def _markdown(data: dict) -> str:
    now, before = data.get("rows", {}), data.get("before", {})
    lines = ["# Mutation testing of the core modules", "",
             "Generated by `scripts/mutants.py` (its docstring says how to run it and how long it takes); do not",
             "edit by hand. Each mutant is one single change to the code (a flipped comparison, an off-by-one, a",
             "wrong axis, a dropped mask, swapped arguments, a wrong constant, a removed check, a wrong default),",
             "applied to a copy of the repository; the fast test selection named for it must then fail.",
             "Score = caught / scored (equivalent, stale and baseline-failed mutants are not scored; a timeout",
             "counts as not caught). *Before* is the score without `tests/test_mutants_*.py`, the tests written",
             "for the mutants that survived (`--before`).", "", "## Score", "",
             "| | caught | scored | score | caught by doctests only | measured at |", "|---|---|---|---|---|---|"]
    for label, rows in (("with every test", now), ("before the added tests", before)):
        if rows:
            caught, scored = score(rows)
            doctests = sum(1 for r in rows.values() if r["result"] == "caught" and r.get("doctest"))
            commits = ", ".join(sorted({r.get("commit", "?") for r in rows.values()}))
            lines.append(f"| {label} | {caught} | {scored} | {100 * caught / max(scored, 1):.0f}% | {doctests} | "
                         f"{commits} |")
    lines += ["", "| module | mutants | caught before | caught now |", "|---|---|---|---|"]
    for module in dict.fromkeys(m.module for m in MUTANTS):
        ids = {m.id: m for m in MUTANTS if m.module == module}
        cells = []
        for rows in (before, now):
            part = {i: r for i, r in rows.items() if i in ids}
            caught, scored = score(part)
            cells.append(f"{caught} / {scored}" if part else "not run")
        lines.append(f"| {module} | {len(ids)} | {cells[0]} | {cells[1]} |")
    lines += ["", "## Mutants", "",
              "| mutant | kind | the change does | before | now | caught by (first failing test) |",
              "|---|---|---|---|---|---|"]
    for m in MUTANTS:
        b, n = before.get(m.id, {}), now.get(m.id, {})
        if not b and not n:
            continue
        latest = n or b
        by = latest.get("caught_by", "").replace("|", "\\|") + (" (doctest only)" if latest.get("doctest") else "")
        lines.append(f"| `{m.id}` | {m.kind} | {m.what} | {b.get('result', '')} | {n.get('result', '')}"
                     f"{' (equivalent)' if m.equivalent else ''} | {by} |")
    notes = [m for m in MUTANTS if m.equivalent or m.left or
             any(rows.get(m.id, {}).get("result") not in (None, "caught") for rows in (before, now))]
    lines += ["", "## Survivors", "",
              "Every mutant that survived a run (before or now), and why: fixed by the test that "
              "now catches it, equivalent (the same behaviour: not scored), or left (with the reason).", ""]
    if not notes:
        lines.append("None: every mutant is caught, with or without the added tests.")
    for m in notes:
        b, n = before.get(m.id, {}), now.get(m.id, {})
        head = f"- `{m.id}` ({m.what}): before {b.get('result', 'not run')}, now {n.get('result', 'not run')}"
        if n.get("result") == "caught" and b.get("result") != "caught":
            head += f"; fixed by `{n.get('caught_by', '')}`"
        if m.equivalent:
            head += f"; equivalent, not scored: {m.equivalent}"
        if m.left:
            head += f"; left: {m.left}"
        lines.append(head)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated module names (counts, divergence, ...) or mutant ids")
    parser.add_argument("--list", action="store_true", help="print the mutants (and whether each snippet is "
                        "still in the working tree) and exit")
    parser.add_argument("--render", action="store_true", help="rewrite MUTATION.md from the results file and exit")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--before", action="store_true",
                        help=f"leave out {ADDED_TESTS}*.py: the score before the tests added for survivors")
    parser.add_argument("--rev", default="HEAD", help="the commit whose files are copied (default HEAD: "
                        "uncommitted edits, yours or anyone's, never enter a run)")
    parser.add_argument("--worktree", action="store_true",
                        help="copy the working tree's tracked files (uncommitted edits included) instead of --rev")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default: 4 x its baseline, >= 120)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs (faster, less safe)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs pytest")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "mutation.json"),
                        help="results (merged by mutant id); the markdown goes beside it as MUTATION.md")
    args = parser.parse_args()

    out = Path(args.out)
    if args.render:
        (out.parent / "MUTATION.md").write_text(_markdown(json.loads(out.read_text())))
        return
    chosen = MUTANTS
    if args.only:
        wanted = {w.strip() for w in args.only.split(",") if w.strip()}
        chosen = [m for m in MUTANTS if m.module in wanted or m.id in wanted or m.file in wanted]
        unknown = wanted - {m.module for m in MUTANTS} - {m.id for m in MUTANTS} - {m.file for m in MUTANTS}
        if unknown:
            sys.exit(f"--only: unknown {sorted(unknown)}; modules: {sorted(set(MODULES.values()))}")
    if args.list:
        for m in chosen:
            flag = f"  [equivalent: {m.equivalent}]" if m.equivalent else ""
            found = (ROOT / m.file).read_text().count(m.find) if (ROOT / m.file).is_file() else 0
            state = {0: "stale", 1: "ok"}.get(found, f"ambiguous ({found})")
            print(f"{m.id:<40} {state:<6} {m.kind:<18} {m.what}{flag}\n{'':<47} {m.tests}")
        print(f"{len(chosen)} mutants over {len({m.module for m in chosen})} modules")
        return

    commit = _git("rev-parse", "--short", "HEAD" if args.worktree else args.rev)
    if args.worktree and _git("status", "--porcelain", "--untracked-files=no"):
        commit += "+worktree"
    print(f"{len(chosen)} mutants, copy of {'the working tree' if args.worktree else 'commit ' + args.rev} ({commit})",
          flush=True)
    rows, started = {}, time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutant-snapshot-") as folder, \
            concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        snapshot = Path(folder)  # one snapshot per run: the baseline and every mutant see the same tree
        _snapshot(snapshot, None if args.worktree else args.rev)
        baseline = _baselines(chosen, args, snapshot)
        for row in pool.map(lambda m: _run_one(m, args, baseline, snapshot), chosen):
            row["commit"] = commit
            rows[row["id"]] = row
            flag = " (equivalent)" if MUTANTS_BY_ID[row["id"]].equivalent else ""
            print(f"{row['result']:>16}{flag} {row['seconds']:6.1f}s  {row['id']:<40} {row.get('caught_by', '')}",
                  flush=True)

    data = json.loads(out.read_text()) if out.is_file() else {}
    key = "before" if args.before else "rows"
    merged = {**data.get(key, {}), **rows}
    data[key] = {i: merged[i] for i in MUTANTS_BY_ID if i in merged}  # list order; dropped mutants go
    data["updated"] = datetime.datetime.now().isoformat(timespec="seconds")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    (out.parent / "MUTATION.md").write_text(_markdown(data))
    caught, scored = score(rows)
    total_caught, total_scored = score(data[key])
    survivors = [i for i, r in rows.items() if r["result"] != "caught"]
    print(f"\nthis run: {caught} / {scored} caught ({100 * caught / max(scored, 1):.0f}%); "
          f"all recorded{' (before)' if args.before else ''}: {total_caught} / {total_scored} "
          f"({100 * total_caught / max(total_scored, 1):.0f}%)")
    if survivors:
        print("not caught: " + ", ".join(f"{i} ({rows[i]['result']})" for i in survivors))
    print(f"wrote {out} and {out.parent / 'MUTATION.md'} ({(time.monotonic() - started) / 60:.0f} minutes)")


if __name__ == "__main__":
    main()
