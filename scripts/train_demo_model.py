"""Train the bundled demo model: a tiny multilingual Qwen3-MoE on UDHR train texts, bytes in.

Writes model.safetensors (bf16, loaded as fp32), config.json, tokenizer files, training.json,
training_log.tsv, eval.json (every measured claim with its controls) and MODEL_CARD.md to `--out`
(default `moe_interp/data/demo_model/`). One run took ~20-60 min on one torch thread of a shared
2-core machine, depending on its load.

    python scripts/train_demo_model.py --seed 0 --out /tmp/demo_s0        # train, evaluate, write the card
    python scripts/train_demo_model.py --out DIR --eval-only               # re-measure a saved model
    python scripts/train_demo_model.py --out DIR --card-only --seeds-from /tmp/demo_s1 /tmp/demo_s2

Deterministic from `--seed`: the initial weights come from `torch.manual_seed(seed)` right before
`AutoModelForCausalLM.from_config` (exactly what `moe_interp.models.zoo.demo_model(trained=False)` does),
and the data order from a single-threaded `numpy` generator seeded with `seed + 1`.

Data: `zoo.DEMO_LANGUAGES`, 55 UDHR languages chosen for the questions the demo asks (issue 13):
six families of seven or more languages each, most in Latin script (Cyrillic for two families, so a
family spans scripts), plus English as a hub that gets `--hub-share` of all sequences (the paper's
English-centred steering needs a language the model knows best). Each sequence picks a language
(the hub with probability `--hub-share`, else uniformly among the others), then a window of its
train text starting at a paragraph boundary or at a random byte.

Interruptions lose nothing: every `--checkpoint-every` steps the model, optimiser, data-order
generator and log are saved to `<out>/checkpoint.pt`; rerunning the same command resumes from it and
produces the same weights as an uninterrupted run.
"""

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import moe_interp as mi  # noqa: E402
from moe_interp.models import zoo  # noqa: E402

OUT = ROOT / "moe_interp" / "data" / "demo_model"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=zoo.DEMO_SEED)
    p.add_argument("--steps", type=int, default=1400)
    p.add_argument("--hub-share", type=float, default=0.25, help="share of sequences drawn from the hub language")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--aux-coef", type=float, default=0.01)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine 2 threads collapsed to ~900 tok/s "
                        "whenever another process ran; 1 thread holds ~4500 tok/s)")
    p.add_argument("--max-wall", type=float, default=0.0,
                   help="if > 0, stop early (and record the steps done) once training passes this many "
                        "seconds; breaks reproducibility, so off by default")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--eval-only", action="store_true", help="evaluate the saved model and rewrite the card")
    p.add_argument("--train-only", action="store_true", help="train and save; evaluate later with --eval-only")
    p.add_argument("--card-only", action="store_true", help="rewrite the card from the saved eval.json files")
    p.add_argument("--readme", action="store_true",
                   help="rewrite the README's claims block from the shipped eval.json files (moe_interp/data/demo_model "
                        "and its seeds/), then exit")
    p.add_argument("--seeds-from", type=Path, nargs="*", default=[],
                   help="directories of other seeds' runs (their training.json and eval.json go into the card)")
    p.add_argument("--resamples", type=int, default=200, help="bootstrap resamples of the family statistics")
    p.add_argument("--permutations", type=int, default=1000, help="label permutations of the family statistics")
    return p.parse_args()


# ----------------------------------------------------------------------------------------- data
class Sampler:
    """Byte windows of the train split: the hub with probability `hub_share`, else a language
    uniformly among the others; then a window start (paragraph start or uniform byte offset, half and
    half). One numpy generator: same seed, same batches; its state is checkpointed."""

    def __init__(self, corpus: dict, seq_len: int, seed: int, hub: str | None = None, hub_share: float = 0.0):
        self.langs = sorted(corpus)
        self.hub = self.langs.index(hub) if hub is not None else None
        self.hub_share = hub_share
        self.others = [i for i in range(len(self.langs)) if i != self.hub]
        self.seq_len = seq_len
        self.rng = np.random.default_rng(seed)
        self.streams, self.starts = [], []
        for lang in self.langs:
            parts = [t.encode("utf-8") + b"\n" for t in corpus[lang]]
            starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
            stream = np.frombuffer(b"".join(parts), dtype=np.uint8).astype(np.int64) + zoo.BYTE_OFFSET
            if len(stream) <= seq_len:
                raise ValueError(f"{lang}: train text shorter than one window ({len(stream)} bytes)")
            self.streams.append(stream)
            self.starts.append(starts[starts < len(stream) - seq_len])

    def batch(self, size: int) -> torch.Tensor:
        rows = []
        for _ in range(size):
            if self.hub is not None and self.rng.random() < self.hub_share:
                i = self.hub
            else:
                i = self.others[int(self.rng.integers(len(self.others)))]
            stream = self.streams[i]
            if self.rng.random() < 0.5 and len(self.starts[i]):
                start = int(self.rng.choice(self.starts[i]))
            else:
                start = int(self.rng.integers(len(stream) - self.seq_len))
            rows.append(stream[start:start + self.seq_len])
        return torch.from_numpy(np.stack(rows))


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------------------- train
def train(args: argparse.Namespace) -> dict:
    from transformers import AutoModelForCausalLM

    torch.use_deterministic_algorithms(True, warn_only=True)
    config = zoo.demo_config(output_router_logits=True, router_aux_loss_coef=args.aux_coef)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, experts_implementation=zoo.DEMO_EXPERTS_IMPLEMENTATION,
                                             dtype=torch.float32)
    init_checksum = zoo._checksum(model)
    model.train()
    corpus = mi.datasets.udhr(list(zoo.DEMO_LANGUAGES), split="train")
    sampler = Sampler(corpus, args.seq_len, args.seed + 1, hub=zoo.DEMO_HUB, hub_share=args.hub_share)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / "checkpoint.pt"
    header = "step\tlm_loss\tbits_per_byte\taux_loss\tlr\ttokens\twall_s\n"
    first, offset = 0, 0.0
    if ckpt_path.is_file():
        # Resume: same weights, optimiser moments, data-order generator and log as at the checkpoint.
        ckpt = torch.load(ckpt_path, weights_only=False)
        if ckpt["args"] != _run_key(args):
            raise ValueError(f"{ckpt_path} was written by a run with other settings ({ckpt['args']}); "
                             "delete it or pass the same arguments")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        sampler.rng.bit_generator.state = ckpt["rng"]
        first, offset, init_checksum = ckpt["step"], ckpt["wall"], ckpt["init_checksum"]
        (args.out / "training_log.tsv").write_text(ckpt["log"])
        print(f"resumed from {ckpt_path} at step {first}", flush=True)
    else:
        (args.out / "training_log.tsv").write_text(header)
    log = open(args.out / "training_log.tsv", "a")
    start = time.time() - offset
    acc = {"lm": 0.0, "aux": 0.0, "n": 0}
    done = args.steps
    for step in range(first, args.steps):
        if args.max_wall and time.time() - start > args.max_wall:
            done = step
            print(f"stopping at step {step}: --max-wall {args.max_wall}s reached", flush=True)
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        ids = sampler.batch(args.batch_size)
        out = model(input_ids=ids, labels=ids)
        lm = out.loss - args.aux_coef * out.aux_loss
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        acc["lm"] += lm.item()
        acc["aux"] += out.aux_loss.item()
        acc["n"] += 1
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            lm_mean, aux_mean = acc["lm"] / acc["n"], acc["aux"] / acc["n"]
            wall = time.time() - start
            tokens = (step + 1) * args.batch_size * args.seq_len
            log.write(f"{step + 1}\t{lm_mean:.4f}\t{lm_mean / math.log(2):.4f}\t{aux_mean:.4f}\t"
                      f"{lr_at(step, args):.2e}\t{tokens}\t{wall:.1f}\n")
            log.flush()
            print(f"step {step + 1:5d}  loss {lm_mean:.4f}  bpb {lm_mean / math.log(2):.3f}  aux {aux_mean:.3f}  "
                  f"{tokens / wall:.0f} tok/s  {wall:.0f}s", flush=True)
            acc = {"lm": 0.0, "aux": 0.0, "n": 0}
            if (step + 1) % args.checkpoint_every == 0 and acc["n"] == 0:
                # Only at log boundaries, so the running means need not be saved.
                tmp = ckpt_path.with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": sampler.rng.bit_generator.state,
                            "step": step + 1, "wall": time.time() - start, "init_checksum": init_checksum,
                            "log": (args.out / "training_log.tsv").read_text(), "args": _run_key(args)}, tmp)
                tmp.replace(ckpt_path)
    wall = time.time() - start
    log.close()
    model.eval()
    model.config.output_router_logits = False   # inference default: no aux loss without labels
    model.to(torch.bfloat16).save_pretrained(args.out)
    zoo.byte_tokenizer().save_pretrained(args.out)
    info = {"seed": args.seed, "steps": done, "planned_steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
            "lr": args.lr, "min_lr_ratio": args.min_lr_ratio, "warmup": args.warmup,
            "weight_decay": args.weight_decay, "aux_coef": args.aux_coef, "threads": args.threads,
            "train_wall_s": round(wall, 1), "tokens": done * args.batch_size * args.seq_len,
            "languages": len(sampler.langs), "hub": zoo.DEMO_HUB, "hub_share": args.hub_share,
            "init_checksum": init_checksum,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores "
                       f"(torch threads {torch.get_num_threads()}), torch {torch.__version__}",
            "date": time.strftime("%Y-%m-%d")}
    (args.out / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    ckpt_path.unlink(missing_ok=True)
    return info


def _run_key(args: argparse.Namespace) -> dict:
    """The settings a checkpoint must share with the run resuming it."""
    keys = ("seed", "steps", "batch_size", "seq_len", "lr", "min_lr_ratio", "warmup", "weight_decay", "aux_coef",
            "hub_share")
    config = zoo.demo_config()  # a checkpoint of another architecture must not resume into this one
    arch = {k: getattr(config, k) for k in ("num_experts", "num_experts_per_tok", "moe_intermediate_size")}
    return {k: getattr(args, k) for k in keys} | {"languages": list(zoo.DEMO_LANGUAGES), "arch": arch}


# ----------------------------------------------------------------------------------------- eval
@torch.no_grad()
def bits_per_byte(hf, texts: list) -> float:
    """Bits per byte of `texts`, each scored on its own (its first byte is not predicted)."""
    rows = [[b + zoo.BYTE_OFFSET for b in t.encode("utf-8")] for t in texts]
    rows = [r for r in rows if len(r) >= 2]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    logits = hf(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    keep = mask[:, 1:].bool()
    return (nll[keep].sum() / keep.sum()).item() / math.log(2)


def evaluate(args: argparse.Namespace) -> dict:
    """Held-out bits/byte (trained vs its twin) and every claim of the demo with its controls
    (`moe_interp.experiments.demo.demo_evidence`, full settings), as plain numbers for eval.json."""
    from moe_interp.experiments.demo import _pieces, demo_evidence

    torch.manual_seed(0)
    heldout = _pieces(mi.datasets.udhr(list(zoo.DEMO_LANGUAGES), split="heldout"), args.seq_len)
    result = {"bits_per_byte": {}}
    for name, trained in (("trained", True), ("twin", False)):
        hf = zoo.demo_model(trained=trained, path=args.out)._module
        result["bits_per_byte"][name] = {lang: bits_per_byte(hf, texts) for lang, texts in sorted(heldout.items())}
    print("bits/byte done", flush=True)
    ev = demo_evidence(path=args.out, resamples=args.resamples, permutations=args.permutations, progress=False,
                       log=lambda line: print(line, flush=True))
    result.update(ev.record())  # the plain numbers every claim is worded from (moe_interp.experiments._claims)
    result["settings"] = {"resamples": args.resamples, "permutations": args.permutations,
                          "controls": ev.ablation.controls if ev.ablation is not None else None}
    return result


# ----------------------------------------------------------------------------------------- card
def _settings(ev: dict) -> str:
    settings = ev.get("settings", {"resamples": 200, "permutations": 1000})  # eval.json before it recorded them
    resamples = settings.get("resamples", settings.get("replicates"))  # the shipped eval.json files say replicates
    return f"{resamples} resamples, {settings['permutations']} permutations"


def write_card(args: argparse.Namespace, info: dict, result: dict, seeds: dict, pending: dict) -> None:
    from transformers import AutoConfig

    from moe_interp.experiments._claims import claims, seed_claims, seed_header
    from moe_interp.experiments.report import markdown_table

    config = AutoConfig.from_pretrained(args.out, local_files_only=True)
    rope = getattr(config, "rope_parameters", None) or {}
    cfg = {k: getattr(config, k, rope.get(k)) for k in dir(config) if not k.startswith("_")} | dict(rope)
    bpb_t, bpb_r = result["bits_per_byte"]["trained"], result["bits_per_byte"]["twin"]
    log = [line.split("\t") for line in (args.out / "training_log.tsv").read_text().splitlines()[1:]]
    size = (args.out / "model.safetensors").stat().st_size / 1e6
    train_bytes = sum(len(t.encode()) for v in mi.datasets.udhr(list(zoo.DEMO_LANGUAGES), split="train").values()
                      for t in v)
    keys = ["hidden_size", "num_hidden_layers", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
            "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "norm_topk_prob",
            "tie_word_embeddings", "router_aux_loss_coef", "rope_theta", "max_position_embeddings"]
    families = {lang: fam for fam, langs in zoo.DEMO_FAMILIES.items() for lang in langs}
    by_family = {}
    for lang in bpb_t:
        by_family.setdefault(families[lang], []).append(lang)
    lines = [
        "# moe_interp demo model", "",
        "A tiny multilingual Mixture-of-Experts language model over bytes, of the real transformers "
        "architecture `Qwen3MoeForCausalLM`, trained from scratch on UDHR texts so that the routing-analysis "
        "pipeline, with its controls, can be shown offline on a CPU. Load it with `moe_interp.models.zoo.demo_model()`; "
        "`moe_interp.models.zoo.demo_model(trained=False)` is its random-init twin (same config, the training run's "
        "seed, weights exactly as initialised) and `demo_model(trained=False, seed=k)` further twins.", "",
        f"Not a useful language model: it has seen {info['tokens'] / 1e6:.1f} MB of one document in "
        f"{info['languages']} languages.", "",
        "## Corpus: designed for the questions", "",
        f"{info['languages']} UDHR languages in {len(zoo.DEMO_FAMILIES)} families of at least 7 languages each "
        "(`moe_interp.models.zoo.DEMO_FAMILIES`), most in Latin script; Indo-European and Turkic also in Cyrillic, so "
        f"a family spans scripts. English (`{info['hub']}`) is the hub: {100 * info['hub_share']:.0f}% of all training "
        "sequences (the paper's English-centred steering needs a language the model knows best); the other "
        "languages share the rest uniformly.", "",
        markdown_table(["family", "languages"], [[f, ", ".join(l)] for f, l in zoo.DEMO_FAMILIES.items()]), "",
        "## Configuration", "",
        markdown_table(["key", "value"], [[k, cfg.get(k)] for k in keys] + [
            ["parameters", info.get("parameters", "?")],
            ["experts_implementation", f"`{zoo.DEMO_EXPERTS_IMPLEMENTATION}` (passed at load)"],
            ["weights", f"model.safetensors, bfloat16 ({size:.1f} MB), loaded as float32"],
            ["tokenizer", "`moe_interp.models.zoo.byte_tokenizer()`: ids 0-2 `<pad>` `<s>` `</s>`, id = 3 + byte"]]), "",
        "## Training", "",
        "- data: UDHR train split (preamble + articles 1-24); each sequence picks a language (the hub with "
        f"probability {info['hub_share']}, else uniformly), then a {info['seq_len']}-byte window of its text "
        "(starting at a paragraph boundary or a uniformly random byte, half and half); no BOS",
        f"- objective: next-byte cross-entropy + {info['aux_coef']} x load-balancing loss",
        f"- optimiser: AdamW (betas 0.9, 0.95, weight decay {info['weight_decay']} on matrices), lr {info['lr']} "
        f"with {info['warmup']} warm-up steps and cosine decay to {info['min_lr_ratio']} x, grad-norm clip 1.0",
        f"- {info['steps']} steps x {info['batch_size']} sequences x {info['seq_len']} bytes = {info['tokens']:,} "
        f"bytes (~{info['tokens'] / train_bytes:.1f} passes over the {train_bytes:,}-byte train split)",
        f"- seed {info['seed']} (`torch.manual_seed` before `from_config`; data order from numpy seed "
        f"{info['seed'] + 1}); `torch.use_deterministic_algorithms(True)`; {info['threads']} torch thread; "
        "checkpoints every 50 steps (a resumed run gives the same weights)",
        f"- wall time {info['train_wall_s'] / 60:.1f} min on {info['machine']} ({info['date']}); the machine was "
        "shared with other jobs (load 2-6), so timings are indicative",
        f"- initial-weight checksum {info['init_checksum']} (the twin reproduces it)", "",
        "Training log (`training_log.tsv`, mean over each logging interval):", "",
        "| step | lm loss (nats) | bits/byte | aux loss | wall (s) |", "|---|---|---|---|---|",
        *[f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[6]} |" for r in _summary_rows(log)], "",
        "## Held-out bits per byte", "",
        f"UDHR held-out split (articles 25-30), cut into pieces of at most {info['seq_len']} bytes at character "
        "boundaries, each scored on its own (first byte not predicted). The random twin sits near log2(259) = 8.02.", "",
        f"- mean over {len(bpb_t)} languages: trained **{np.mean(list(bpb_t.values())):.3f}**, random twin "
        f"{np.mean(list(bpb_r.values())):.3f}; trained is lower in {sum(bpb_t[l] < bpb_r[l] for l in bpb_t)} / "
        f"{len(bpb_t)} languages; hub ({info['hub']}) {bpb_t[info['hub']]:.3f}", "",
        markdown_table(["family", "languages", "trained", "twin"],
                       [[f, len(l), f"{np.mean([bpb_t[x] for x in l]):.3f}", f"{np.mean([bpb_r[x] for x in l]):.3f}"]
                        for f, l in by_family.items()]), "",
        "## What the model shows, with its controls (shipped model, seed " f"{info['seed']})", "",
        "Measured by `moe_interp.experiments.demo.demo_evidence` (what `moe-interp demo` runs, there with lighter settings) "
        f"with {_settings(result).replace('resamples', 'bootstrap resamples').replace('permutations', 'label permutations')}. "
        "Experts are chosen on a profile of the train split (minus its last 3 paragraphs per language), the "
        "steering scale on those 3 paragraphs, and every number is measured on the held-out split; intervals are "
        "95% percentile bootstrap intervals. Family structure: middle band of MoE layers (the paper's 10/48-40/48 "
        "edges), Jensen-Shannon divergence, average-linkage clustering cut at the number of families; intervals "
        "resample the languages (each with its texts), the same draws for every model, so differences are paired; "
        "controls: three random-init twins (seeds s, s+1000, s+2000) and exact byte 1-, 2- and 3-gram "
        "distributions through the same clustering (the strongest per statistic is the bar). Depth profile: the "
        "same per MoE layer. Ablation: each language's exclusive experts (exclusive among all 55 profiled "
        "languages) rerouted per equal-width band of layers; bits/byte change on held-out texts of the target, "
        "of evaluated languages of its family and of other families (intervals over languages, then texts), "
        "against 20 random expert sets per cell matched to the ablated experts' usage, read as a distribution. "
        "Steering: RouteSteer toward experts shared with English (middle band), dose-response over scales, "
        "routing moved measured on the steered layers. Every verdict and sentence below is worded by the rules "
        "of `moe_interp.experiments._claims` from the numbers in `eval.json`.", "",
        markdown_table(["claim (held-out texts, 95% intervals)", "trained model", "controls", "verdict"],
                       [[c["claim"], c["trained"], c["controls"], c["verdict"]] for c in claims(result)]), "",
        *[f"- {sentence}" for sentence in dict.fromkeys(c["sentence"] for c in claims(result))], "",
        f"## Across training seeds ({len(seeds)} run{'s' * (len(seeds) != 1)} of this recipe, seeds {', '.join(map(str, sorted(seeds)))})", "",
        "Same measurements for each seed's model (only seed " f"{info['seed']} is shipped; settings: "
        + "; ".join(f"seed {s}: {_settings(ev)}" for s, ev in sorted(seeds.items())) + "). A claim about the "
        "training recipe is judged across seeds: the family statistics with an exact rank test of the trained "
        "models against every twin of every seed, the others by the number of seeds in which they hold.", "",
        markdown_table(seed_header(seeds), seed_claims(seeds)), "",
    ]
    if pending:
        lines += [f"Not measured: {'; '.join(f'seed {s}: {why}' for s, why in sorted(pending.items()))} when this card "
                  "was written. To add a seed: `python scripts/train_demo_model.py --seed S --out DIR` (it resumes "
                  "from its checkpoint, then evaluates), then `python scripts/train_demo_model.py --out "
                  "moe_interp/data/demo_model --card-only --seeds-from DIR ...`.", ""]
    lines += [f"The hub ({info['hub']}) has held-out {bpb_t[info['hub']]:.2f} bits/byte against "
              f"{np.mean(list(bpb_t.values())):.2f} on average over the languages, although it was drawn "
              f"{100 * info['hub_share']:.0f}% of the time (from ~7.7 KB of text).", "",
              f"Wall time of the measurement: {', '.join(f'{k} {v:.0f} s' for k, v in result['seconds'].items())} "
              "(one torch thread on a shared 2-core machine).", ""]
    lines += ["Per-language held-out bits/byte and every number above: `eval.json` next to this card (the other seeds: "
              "`seeds/s<seed>/`, with their training.json and training_log.tsv).", "",
              "Reproduce: `python scripts/train_demo_model.py --seed S --out DIR` (train + evaluate), "
              "`--eval-only` to re-measure a saved model, `--seeds-from DIR1 DIR2` to add other seeds' eval.json "
              "to the card.", ""]
    (args.out / "MODEL_CARD.md").write_text("\n".join(lines))


def _unfinished(run: Path) -> tuple:
    """(seed, what it reached) of a run directory without eval.json: still training, or not evaluated."""
    if (run / "training.json").is_file():
        info = json.loads((run / "training.json").read_text())
        return info["seed"], f"trained ({info['steps']} steps), not yet evaluated"
    ckpt = run / "checkpoint.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{run} holds no training run (no training.json, no checkpoint.pt); pass the --out "
                                "directory of a `scripts/train_demo_model.py` run")
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    return state["args"]["seed"], f"still training, {state['step']} of {state['args']['steps']} steps reached"


def _summary_rows(log: list) -> list:
    if len(log) <= 12:
        return log
    idx = sorted(set(np.linspace(0, len(log) - 1, 12).round().astype(int).tolist()))
    return [log[i] for i in idx]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.readme:
        from moe_interp.experiments._claims import README_END, README_START, readme_block
        from moe_interp.experiments.demo import seed_records

        readme = ROOT / "README.md"
        text = readme.read_text()
        start, end = text.index(README_START), text.index(README_END) + len(README_END)
        readme.write_text(text[:start] + readme_block(seed_records()) + text[end:])
        print(f"wrote the claims block of {readme}")
        return
    if args.card_only:
        info = json.loads((args.out / "training.json").read_text())
        result = json.loads((args.out / "eval.json").read_text())
    else:
        if args.eval_only:
            info = json.loads((args.out / "training.json").read_text())
        else:
            info = train(args)
            if args.train_only:
                return
        result = evaluate(args)
        (args.out / "eval.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    info["parameters"] = f"{sum(p.numel() for p in zoo.demo_model(trained=False, path=args.out)._module.parameters()):,}"
    from moe_interp.experiments._claims import FORMAT, claims

    if result.get("format") != FORMAT:
        raise SystemExit(f"{args.out / 'eval.json'} was measured in an older format ({result.get('format', 'before /2')}); "
                         f"re-measure it: python scripts/train_demo_model.py --out {args.out} --eval-only")
    seeds, pending = {info["seed"]: result}, {}
    for other in args.seeds_from:
        if (other / "eval.json").is_file():
            seed = json.loads((other / "training.json").read_text())["seed"]
            record = json.loads((other / "eval.json").read_text())
            if record.get("format") == FORMAT:
                seeds[seed] = record
            else:
                pending[seed] = "measured in an older format (re-measure it with --eval-only)"
        else:
            seed, why = _unfinished(other)
            pending[seed] = why
    write_card(args, info, result, seeds, pending)
    print("\n".join(c["sentence"] for c in claims(result)))


if __name__ == "__main__":
    main()
