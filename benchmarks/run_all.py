"""Run every benchmark, one after the other, each in its own process (they are CPU-heavy).

    python benchmarks/run_all.py --quick          # ~20-25 min on 2 quiet CPU cores (`make bench-quick`)
    python benchmarks/run_all.py                  # full mode: a few hours on 2 CPU cores
    python benchmarks/run_all.py --only retrieval decoding

Each script prints its header (device, versions, threads, config), its tables, and writes
benchmarks/results/<name>[_quick].json (and PNGs). The GPU variant of the training-step benchmark is
separate: `python benchmarks/train_step.py --device cuda --gpu-config`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("train_step", "scaling", "decoding", "retrieval", "quality", "qa_generation")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", choices=SCRIPTS)
    ap.add_argument("--skip", nargs="+", choices=SCRIPTS, default=[])
    args = ap.parse_args(argv)
    names = [n for n in (args.only or SCRIPTS) if n not in args.skip]
    failed, took = [], {}
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py")] + (["--quick"] if args.quick else [])
        print(f"\n======== {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd, cwd=HERE.parent)
        took[name] = time.perf_counter() - start
        if code != 0:
            failed.append(name)
            print(f"======== {name} FAILED with exit code {code}", flush=True)
    print("\n======== summary: " + ", ".join(f"{n} {took[n] / 60:.1f} min" + (" FAILED" if n in failed else "")
                                         for n in names), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
