"""Peak memory and time of `eve-ms data mix` on a generated source of a million lines.

    python tools/benchmarks/mix_scale.py [--lines 1000000 100000] [--take 100000 all] [--workdir DIR]

Writes a LLaVA-format JSONL of N lines (every sample a distinct question about one of 1,000 small
PNG images; 1 % exact duplicates, 0.1 % records without conversations) and runs `eve-ms data mix`
on it in a fresh process per (lines, take) pair, images decoded. Peak RSS is that process's own
(`os.wait4`), so runs do not inherit each other's peaks; CPU s (user + system) is the
number to compare on a loaded machine, where wall time also counts waiting for a core. The numbers go in the README ("Stage-3
data"): memory that stays flat as the source grows is what is being shown.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

IMAGES = 1000


def write_source(folder: str, lines: int) -> str:
    import numpy as np
    from PIL import Image

    images = os.path.join(folder, "images")
    os.makedirs(images, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(os.path.join(images, f"{i:04d}.png"))
    path = os.path.join(folder, f"source_{lines}.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        previous = ""
        for i in range(lines):
            if i % 100 == 99:  # an exact duplicate of the line before
                fh.write(previous)
                continue
            if i % 1000 == 998:
                fh.write(json.dumps({"id": f"s{i}", "image": "0000.png"}) + "\n")
                continue
            record = {"id": f"s{i}", "image": f"{i % IMAGES:04d}.png", "conversations": [
                {"from": "human", "value": f"<image>\nQuestion {i}: what is in the picture?"},
                {"from": "gpt", "value": f"Noise, sample {i}."}]}
            previous = json.dumps(record) + "\n"
            fh.write(previous)
    return path


def run_mix(workdir: str, source: str, lines: int, take: str) -> dict:
    recipe = os.path.join(workdir, f"recipe_{lines}_{take}.yaml")
    with open(recipe, "w", encoding="utf-8") as fh:
        fh.write(f"image_root: {workdir}\nseed: 0\noutput: mix.jsonl\ncheck: {{template: v1, decode_images: true}}\n"
                 f"sources:\n  - name: generated\n    path: {source}\n    image_folder: {workdir}/images\n"
                 f"    count: {take}\n")
    out = os.path.join(workdir, f"out_{lines}_{take}")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "eve_ms.cli", "data", "mix", recipe, "--out", out, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"eve-ms data mix failed:\n{output}")
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as fh:
        totals = json.load(fh)["totals"]
    return {"lines": lines, "take": take, "source_mb": os.path.getsize(source) / 2**20, "seconds": seconds,
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024, **totals}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--take", nargs="+", default=["50000", "all"], help="count per run: a number or 'all'")
    parser.add_argument("--workdir", default="", help="keep the generated files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="eve_mix_scale_") as tmp:
        workdir = os.path.abspath(args.workdir or tmp)
        print("| source lines | source MB | taken | duplicates | skipped | wall s | CPU s | peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|")
        for lines in args.lines:
            source = write_source(workdir, lines)
            for take in args.take:
                r = run_mix(workdir, source, lines, take)
                print(f"| {lines:,} | {r['source_mb']:.0f} | {r['taken']:,} | {r['duplicates']:,} | {r['skipped']:,} "
                      f"| {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['peak_rss_mb']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
