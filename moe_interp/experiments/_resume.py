"""The one resume loop: running sums over a corpus, kept in a checkpoint that a rerun resumes.

`mi.profile` and `mi.expert_attribution` both walk a corpus batch by batch, adding each
batch to running sums. `run_resumable` drives that walk: it resumes the sums and the rows
done from the checkpoint (when there is one), saves them every `save_every` batches and on
any interruption, and shows the progress. The checkpoint is keyed by content and carries a
sha256 checksum of itself (`core._fingerprint.save_checkpoint` / `load_checkpoint`, written
atomically by `core._files`): another run's checkpoint, or one changed after it was written,
raises `ResumeError` naming what differs, and is never resumed.
"""

import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from tqdm.auto import tqdm

from moe_interp.core._fingerprint import load_checkpoint, save_checkpoint

__all__ = ["run_resumable"]


def run_resumable(steps: Callable[[int, dict[str, torch.Tensor]], Iterable[tuple[int, int]]],
                  sums: Mapping[str, torch.Tensor], *, total: int, key: Mapping[str, str],
                  checkpoint: str | os.PathLike | None, form: str, what: str, save_every: int,
                  progress: bool = True, desc: str | None = None, unit: str = "row") -> dict[str, torch.Tensor]:
    """Run `steps` to the end of a corpus of `total` rows, resuming and saving `sums`; returns the sums.

    **Arguments:** `steps(done, sums)`: the batches still to run, from row `done` on; each
    adds its batch to the tensors of `sums` in place, then yields `(rows, tokens)` (rows
    finished, tokens routed: the bar shows tokens per second). `sums`: the running sums,
    zeros of their final shape and dtype. `checkpoint`: a path (or None: nothing is saved);
    an existing one is resumed when it is this very run's (`key`: part name ->
    fingerprint, checked with its format `form`; `what` names the run in errors),
    `ResumeError` otherwise. It is written every `save_every` batches and once more when
    the run ends, finished or interrupted: rerunning the same call resumes there.

    ```python
    >>> import os, tempfile, torch
    >>> from moe_interp.experiments._resume import run_resumable
    >>> numbers, path = list(range(1, 7)), os.path.join(tempfile.mkdtemp(), "sum.ckpt")
    >>> def steps(done, sums):                   # two rows a batch; the third batch fails
    ...     for start in range(done, len(numbers), 2):
    ...         if start == 4 and not resumed:
    ...             raise RuntimeError("interrupted")
    ...         sums["total"] += sum(numbers[start : start + 2])
    ...         yield 2, 0
    >>> run = dict(total=6, key={"numbers": "1-6"}, checkpoint=path, form="demo/1", what="a demo", save_every=10,
    ...            progress=False)
    >>> resumed = False
    >>> run_resumable(steps, {"total": torch.zeros((), dtype=torch.long)}, **run)
    Traceback (most recent call last):
    RuntimeError: interrupted
    >>> torch.load(path, weights_only=True)["done"]   # saved when it failed
    4
    >>> resumed = True
    >>> run_resumable(steps, {"total": torch.zeros((), dtype=torch.long)}, **run)   # runs rows 4-5 only
    {'total': tensor(21)}

    ```
    """
    path = None if checkpoint is None else Path(checkpoint)
    done, sums = 0, dict(sums)
    if path is not None and path.exists():
        done, sums = load_checkpoint(path, key, sums, total, form, what, checksum=True)

    def save() -> None:
        if path is not None:
            save_checkpoint(path, {"format": form, "key": key, "done": done, **sums})

    started, tokens_seen = time.perf_counter(), 0
    bar = tqdm(total=total, initial=done, unit=unit, disable=not progress, desc=desc)
    try:
        for batch, (rows, tokens) in enumerate(steps(done, sums), 1):
            done += rows
            tokens_seen += tokens
            bar.update(rows)
            bar.set_postfix(tokens_per_s=f"{tokens_seen / (time.perf_counter() - started):.0f}")
            if batch % save_every == 0:
                save()
    finally:  # finished or interrupted, nothing computed is lost: rerunning the same call resumes
        bar.close()
        save()
    return sums
