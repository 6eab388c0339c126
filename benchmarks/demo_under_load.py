"""Wall time of `moe-interp demo` while other work keeps the CPUs busy.

    python benchmarks/demo_under_load.py [--load N] [--threads auto] [--screenshot docs/assets/report.png]

Starts N busy processes (default: one per CPU this process may use), runs the real command
(`moe-interp demo`, the demo model's 55 languages, `--threads auto` unless told) beside them, and writes
the wall time, the thread count the command chose, the load averages and the findings into
the "Demo under load" section of benchmarks/RESULTS.md (between its markers; the rest of the
file is left as `run.py` wrote it). Takes minutes (the demo alone: about 3 on 2 idle cores, an estimate from its CPU time under load).
Optionally screenshots the report (scripts/check_html.py, needs chromium) for the docs.
"""

import argparse
import datetime
import multiprocessing
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
START, END = "<!-- demo under load: written by benchmarks/demo_under_load.py -->", "<!-- end of demo under load -->"


def _busy() -> None:
    while True:
        pass


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE).stdout.strip()
    except OSError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser.add_argument("--load", type=int, default=cpus, help="busy processes beside the demo")
    parser.add_argument("--threads", default="auto", help="the demo's --threads")
    parser.add_argument("--screenshot", type=Path, help="PNG of the report's top (scripts/check_html.py)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()

    before = os.getloadavg()
    busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
    for process in busy:
        process.start()
    time.sleep(60)  # let the 1-minute load average see the busy processes, as auto threads reads it
    loaded = os.getloadavg()
    report = Path(tempfile.mkdtemp()) / "report.html"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "TORCH_NUM_THREADS", "MKL_NUM_THREADS")}
    started, cpu_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        result = subprocess.run([sys.executable, "-m", "moe_interp.cli", "demo", "--out", str(report),
                                 "--threads", args.threads], capture_output=True, text=True, env=env)
    finally:
        seconds = time.perf_counter() - started
        after = os.getloadavg()
        for process in busy:
            process.terminate()
    if result.returncode:
        sys.stderr.write(result.stderr[-3000:])
        return result.returncode
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    chosen = re.search(r"moe-interp: (\d+ torch threads? \([^)]*\))", result.stderr)
    findings = [line for line in result.stdout.splitlines() if line and not line.startswith("wrote ")]
    size = report.stat().st_size / 1e6
    lines = [START, "## Demo under load", "",
             f"`python benchmarks/demo_under_load.py` (code {_commit()}, {datetime.datetime.now():%Y-%m-%d %H:%M}): "
             f"`moe-interp demo --threads {args.threads}` on the demo model's 55 languages beside {args.load} busy processes "
             f"on {cpus} CPUs (other jobs of the shared machine ran too: see the load averages).", "",
             "| measure | value |", "|---|---|",
             f"| wall time of the demo | {seconds:.0f} s |",
             f"| CPU time of the demo (user + system; with one thread, about its wall time on an idle core) | {cpu:.0f} s |",
             f"| threads the demo chose | {chosen.group(1) if chosen else 'not printed'} |",
             f"| load average (1, 5, 15 min) before the busy processes | {' '.join(f'{v:.2f}' for v in before)} |",
             f"| load average when the demo started | {' '.join(f'{v:.2f}' for v in loaded)} |",
             f"| load average when it ended | {' '.join(f'{v:.2f}' for v in after)} |",
             f"| report size | {size:.1f} MB |", "",
             "For scale (issue 16, the earlier 312-language demo): 176 s on a quiet 2-core machine; 2616 s with other work running and torch's "
             "default of one thread per core; one profile took 1490 s with 2 threads vs 120-290 s with 1 on a busy "
             "machine.", "", "Findings printed by this run:", "", "```", *findings, "```", END]
    text = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    section = "\n".join(lines)
    text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda m: section, text, flags=re.S) if START in text \
        else text.rstrip("\n") + "\n\n" + section + "\n"
    args.out.write_text(text, encoding="utf-8")
    print(section)
    if args.screenshot is not None:
        subprocess.run([sys.executable, str(HERE.parent / "scripts" / "check_html.py"), str(report),
                        "--screenshot", str(args.screenshot)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
