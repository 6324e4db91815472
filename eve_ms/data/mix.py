"""`eve-ms data mix RECIPE.yaml --out DIR`: one LLaVA-format JSONL drawn from several sources by a recipe.

A recipe (yaml) names an image root, a seed, the checks every sample must pass, and sources: each a
LLaVA-format JSON list or JSONL file, the folder its `image` paths are relative to, and how many
samples to take (`count: N`, `count: all` or `fraction: F` of the usable ones). Paths are relative
to the working directory, as in the run configs. The mix is written as `DIR/<output>` (one JSON
object per line; image paths rewritten relative to the image root) plus `DIR/manifest.json`.

Per source, in recipe order:
1. one streaming pass over the file (`readers.build_index`): structural checks of every record
   (`samples.parse_record`, as `eve-ms data check` runs them), byte offsets, and a 64-bit key of
   (image path under the root, first question) per usable record;
2. duplicates are dropped and counted: a record whose key appeared earlier in the same file, or in
   a sample an earlier source contributed;
3. the usable records are put in a random order drawn from (seed, source name), and walked in that
   order through the full checks of `eve-ms data check` (`check.RecordChecker`: structure, token
   length with a tokenizer, image file decodes) until the wanted number passed; a record that fails
   is counted with its reason and the next one takes its place;
4. the samples taken are written in file order.

The result depends only on the recipe and the source files' bytes: the same recipe gives the same
bytes, another seed another draw. Memory holds no records, only the index of the source being read
(offsets, sizes, lines, keys: 33 bytes a record, about twice that at its peak while numpy sorts the
keys) and 8 bytes per sample taken (for the cross-source duplicate check): a 1M-line source peaks at
about 130 MB (tools/benchmarks/mix_scale.py).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import yaml

from eve_ms.config import ConfigError, from_dict
from eve_ms.data.check import RecordChecker
from eve_ms.data.images import ImageProcessor
from eve_ms.data.readers import RawRecord, RecordReader, build_index, sample_id
from eve_ms.data.report import SKIP_REASONS, DataError, MalformedJSONError
from eve_ms.data.samples import SampleEncoder, parse_record
from eve_ms.data.templates import get_template

MANIFEST_FORMAT = 1
MANIFEST_NAME = "manifest.json"
DRAW_CHUNK = 2048  # records read back and fully checked at a time (bounds memory, not the result)


@dataclass
class MixCheck:
    """The checks of `eve-ms data check` every mixed sample passes (its options, by the same names)."""

    template: str = "v1"
    decode_images: bool = True  # False: only check that image files exist (`--no-decode`)
    tokenizer: str = ""  # tokenizer.json or directory: also check token lengths against max_length
    max_length: int = 2048
    num_image_tokens: int = 0  # tokens per image; needed with a tokenizer (144 for LDP on 24 x 24)


@dataclass
class MixSource:
    """One source of a recipe."""

    name: str
    path: str  # LLaVA-format JSON list or JSONL file
    image_folder: str = ""  # its `image` paths are relative to this folder; empty = the recipe's image_root
    count: Union[int, str, None] = None  # samples to take, or "all"
    fraction: Optional[float] = None  # or this fraction (0, 1] of the usable samples, rounded down
    allow_fewer: bool = False  # fewer usable samples than `count`: take them all (the manifest says so)
    line: int = 0  # the recipe line where the source starts (not a yaml key)

    def wanted(self, available: int) -> int:
        if self.fraction is not None:
            return math.floor(self.fraction * available)
        return available if self.count == "all" else int(self.count)


@dataclass
class Recipe:
    image_root: str  # every output image path is relative to this folder (the training config's image_folder)
    seed: int
    sources: list = field(default_factory=list)  # list[MixSource]
    output: str = "mix.jsonl"  # file name of the mix inside --out
    check: MixCheck = field(default_factory=MixCheck)
    path: str = ""  # the recipe file (not a yaml key)


def _source_lines(text: str) -> list[int]:
    """1-based line of each item of the top-level `sources` list (0 where there is none)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    finally:
        loader.dispose()
    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if key.value == "sources" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def load_recipe(path: str, check_files: bool = True) -> Recipe:
    """Read and validate a recipe; every problem is an error naming the file and, for a source, its line.

    `check_files` False skips the checks that need the data on disk (source files exist).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"recipe not found: {path}")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        raw = yaml.safe_load(text)
        lines = _source_lines(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid yaml: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    raw_sources = raw.pop("sources", None)
    if not isinstance(raw_sources, list) or not raw_sources:
        raise ConfigError(f"{path}: `sources` must be a non-empty list")
    recipe = from_dict(Recipe, raw, path)
    recipe.path = path
    if recipe.seed < 0:
        raise ConfigError(f"{path}: seed must be a non-negative integer, got {recipe.seed}")
    if not recipe.output or os.path.basename(recipe.output) != recipe.output or recipe.output == MANIFEST_NAME:
        raise ConfigError(f"{path}: output must be a plain file name other than {MANIFEST_NAME}, got {recipe.output!r}")
    if recipe.check.tokenizer and recipe.check.num_image_tokens < 1:
        raise ConfigError(f"{path}: check.num_image_tokens is needed with check.tokenizer (144 for LDP on 24 x 24)")
    get_template(recipe.check.template)  # an unknown template is a ValueError naming the choices
    root = os.path.abspath(recipe.image_root)
    seen = {}
    for number, item in enumerate(raw_sources):
        line = lines[number] if number < len(lines) else 0
        where = f"{path} line {line}" if line else f"{path} sources[{number}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: a source must be a mapping, got {item!r}")
        source = from_dict(MixSource, item, where)
        source.line = line
        if source.name in seen:
            raise ConfigError(f"{where}: source name {source.name!r} already used at line {seen[source.name]}")
        seen[source.name] = line
        if (source.count is None) == (source.fraction is None):
            raise ConfigError(f"{where}: source {source.name!r} needs exactly one of `count` and `fraction`")
        if source.count is not None and source.count != "all" and not (
                isinstance(source.count, int) and not isinstance(source.count, bool) and source.count >= 1):
            raise ConfigError(f"{where}: count of {source.name!r} must be a positive integer or 'all', "
                              f"got {source.count!r}")
        if source.fraction is not None and not 0 < source.fraction <= 1:
            raise ConfigError(f"{where}: fraction of {source.name!r} must be in (0, 1], got {source.fraction}")
        if check_files and not os.path.isfile(source.path):
            raise ConfigError(f"{where}: source file of {source.name!r} not found: {source.path}")
        source.image_folder = source.image_folder or recipe.image_root
        folder = os.path.abspath(source.image_folder)
        if os.path.commonpath([root, folder]) != root:
            raise ConfigError(f"{where}: image_folder {source.image_folder} of {source.name!r} is not inside "
                              f"image_root {recipe.image_root}: its image paths cannot be written under one root")
        recipe.sources.append(source)
    return recipe


def _sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _key(image: str, question: str) -> int:
    """64-bit key of a sample's identity for duplicate detection (collisions: ~1e-7 over millions of samples)."""
    digest = hashlib.blake2b(f"{image}\0{question}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class ImageOutsideRoot(DataError):
    """A sample's image is not under the recipe's image_root: the recipe, not the sample, must change."""


def _image_under_root(image: str, folder: str, root: str) -> str:
    """`image` (relative to the absolute `folder`) as a POSIX path relative to the absolute `root`."""
    path = os.path.normpath(os.path.join(folder, image))
    prefix = root if root.endswith(os.sep) else root + os.sep
    if not path.startswith(prefix):
        raise ImageOutsideRoot(f"image {image} resolves outside image_root {root}")
    return path[len(prefix):].replace(os.sep, "/")


def _rewrite_image(record: dict, image: str) -> dict:
    record = dict(record)
    record["image"] = [image] if isinstance(record.get("image"), list) else image
    return record


class _Progress:
    """Records scanned, on stderr (silent when disabled)."""

    def __init__(self, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(desc=desc, unit=" records", unit_scale=True, file=sys.stderr, mininterval=1.0)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Scan:
    """One pass over a source: its record index (structural problems counted in its report) and a key per record."""

    index: object  # readers.RecordIndex
    keys: np.ndarray  # uint64 [len(index)]


def _scan(source: MixSource, template, root: str, where: str, progress: bool) -> _Scan:
    """Structural checks and identity keys of every record of `source`, streaming."""
    folder, keys = os.path.abspath(source.image_folder), array("Q")
    bar = _Progress(progress, f"scan {source.name}")

    def validate(record: object) -> bool:
        bar.update()
        conversation = parse_record(record, template)
        try:
            image = _image_under_root(conversation.image, folder, root) if conversation.image else ""
        except ImageOutsideRoot as err:
            name = sample_id(record, f"number {len(keys) + 1} (among the records that passed the checks)")
            raise ImageOutsideRoot(f"{where}: source {source.name!r} ({source.path}), sample {name}: {err}; "
                                   f"choose an image_root above every image") from None
        keys.append(_key(image, conversation.turns[0].text.strip()))
        return bool(image)

    try:
        index = build_index(source.path, validate, skip_bad_samples=True)
    except MalformedJSONError as err:
        raise DataError(f"{where}: source {source.name!r}: {err}") from err
    finally:
        bar.close()
    return _Scan(index, np.frombuffer(keys, np.uint64))


def _draw(source: MixSource, recipe: Recipe, scan: _Scan, pool: np.ndarray, wanted: int, template, tokenizer,
          workers: int) -> tuple[np.ndarray, int]:
    """Walk `pool` in the order drawn from (seed, name) through the full checks until `wanted` pass.

    Returns the record numbers taken (sorted: file order) and how many records were checked.
    """
    rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, zlib.crc32(source.name.encode("utf-8"))]))
    order = pool[rng.permutation(len(pool))]
    index, report = scan.index, scan.index.report
    # Only decoding is checked, so the processor's size and statistics do not matter (as in `eve-ms data check`).
    opener = ImageProcessor(image_size=1, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    encoder = SampleEncoder(template, tokenizer, num_image_tokens=recipe.check.num_image_tokens,
                            max_length=recipe.check.max_length, image_processor=opener,
                            image_folder=source.image_folder)
    reader = RecordReader(index)
    accepted, checked = array("q"), 0
    with RecordChecker(encoder, recipe.check.decode_images, workers) as checker:
        while len(accepted) < wanted and checked < len(order):
            need = wanted - len(accepted)
            chunk = order[checked:checked + min(DRAW_CHUNK, need + need // 16 + 8)]  # a few spare for failures
            items = [RawRecord(reader.read(int(i)), int(index.offsets[i]), int(index.sizes[i]), int(index.lines[i]))
                     for i in chunk]
            for i, (name, _, _, notes, problem) in zip(chunk, checker(items)):
                checked += 1
                if problem:
                    report.add(problem[0], name)
                    continue
                for note in notes:
                    report.add(note, name)
                accepted.append(int(i))
                if len(accepted) == wanted:
                    break
    return np.sort(np.frombuffer(accepted, np.int64)), checked


def _write(scan: _Scan, taken: np.ndarray, source: MixSource, template, root: str, out) -> None:
    """The records taken, in file order, their image paths made relative to the image root."""
    reader, folder = RecordReader(scan.index), os.path.abspath(source.image_folder)
    for i in taken:
        record = reader.read(int(i))
        conversation = parse_record(record, template)
        if conversation.image:
            record = _rewrite_image(record, _image_under_root(conversation.image, folder, root))
        out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _mix_source(source: MixSource, recipe: Recipe, template, tokenizer, taken_keys: np.ndarray, out, workers: int,
                progress: bool) -> tuple[dict, np.ndarray]:
    """Draw and write one source; its manifest entry and the keys of the samples it contributed."""
    where = f"{recipe.path} line {source.line}"
    stat = os.stat(source.path)
    digest = _sha256(source.path)
    root = os.path.abspath(recipe.image_root)
    scan = _scan(source, template, root, where, progress)
    report = scan.index.report
    records = len(scan.index) + report.num_skipped

    # Duplicates: the first copy in file order stays, and nothing an earlier source contributed.
    _, first = np.unique(scan.keys, return_index=True)
    usable = np.zeros(len(scan.keys), bool)
    usable[first] = True
    within = len(scan.keys) - len(first)
    earlier = usable & np.isin(scan.keys, taken_keys)
    usable &= ~earlier
    pool = np.flatnonzero(usable)
    available = len(pool)
    wanted = source.wanted(available)
    if wanted > available and not source.allow_fewer:
        raise DataError(f"{where}: source {source.name!r} ({source.path}) has {available:,} usable samples, "
                        f"{wanted:,} asked (set allow_fewer: true to take all available)")

    taken, checked = _draw(source, recipe, scan, pool, wanted, template, tokenizer, workers)
    short_by = 0 if source.count == "all" else wanted - len(taken)
    if short_by and not source.allow_fewer:
        raise DataError(f"{where}: source {source.name!r} ({source.path}): only {len(taken):,} of {available:,} "
                        f"usable samples pass the checks, {wanted:,} asked (set allow_fewer: true to take them all); "
                        f"{report.format('problems')}")
    _write(scan, taken, source, template, root, out)
    after = os.stat(source.path)
    if (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
        raise DataError(f"{where}: source {source.name!r} ({source.path}) changed while it was being mixed")

    skipped = {code: n for code, n in report.counts.items() if code in SKIP_REASONS}
    entry = {
        "name": source.name,
        "path": source.path,
        "recipe_line": source.line,
        "sha256": digest,
        "bytes": stat.st_size,
        "image_folder": source.image_folder,
        "asked": {"fraction": source.fraction} if source.fraction is not None else source.count,
        "allow_fewer": source.allow_fewer,
        "records": records,
        "available": available,
        "wanted": wanted,
        "taken": len(taken),
        "short_by": max(0, short_by),
        "fully_checked": checked,
        "duplicates": {"within_source": int(within), "of_earlier_sources": int(earlier.sum())},
        "skipped": skipped,
        "notes": {code: n for code, n in report.counts.items() if code not in skipped},
        "examples": {code: list(ids) for code, ids in report.refs.items()},
    }
    return entry, scan.keys[taken]


def mix(recipe: Recipe, out_dir: str, workers: int = 1, progress: bool = False, log=print) -> dict:
    """Write the mix and its manifest into `out_dir` (each atomically); returns the manifest."""
    from eve_ms.data.tokenizer import load_tokenizer

    template = get_template(recipe.check.template)
    tokenizer = load_tokenizer(recipe.check.tokenizer) if recipe.check.tokenizer else None
    os.makedirs(out_dir, exist_ok=True)
    output = os.path.join(out_dir, recipe.output)
    tmp = os.path.join(out_dir, f".{recipe.output}.tmp{os.getpid()}")
    entries, taken_keys = [], np.zeros(0, np.uint64)
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as out:
            for source in recipe.sources:
                entry, keys = _mix_source(source, recipe, template, tokenizer, taken_keys, out, workers, progress)
                taken_keys = np.union1d(taken_keys, keys)
                entries.append(entry)
                dups = entry["duplicates"]
                log(f"{source.name}: took {entry['taken']:,} of {entry['available']:,} usable "
                    f"({entry['records']:,} records; {sum(entry['skipped'].values()):,} skipped, "
                    f"{dups['within_source'] + dups['of_earlier_sources']:,} duplicates)"
                    + (f"; {entry['short_by']:,} short of {entry['wanted']:,} asked" if entry["short_by"] else ""))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    totals = {key: sum(e[key] for e in entries) for key in ("records", "available", "taken")}
    totals["skipped"] = sum(sum(e["skipped"].values()) for e in entries)
    totals["duplicates"] = sum(sum(e["duplicates"].values()) for e in entries)
    manifest = {
        "format": MANIFEST_FORMAT,
        "recipe": {"path": recipe.path, "sha256": _sha256(recipe.path)},
        "seed": recipe.seed,
        "image_root": recipe.image_root,
        "check": vars(recipe.check),
        "output": {"file": recipe.output, "sha256": _sha256(output), "samples": totals["taken"]},
        "sources": entries,
        "totals": totals,
    }
    path = os.path.join(out_dir, MANIFEST_NAME)
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    os.replace(path + ".tmp", path)
    return manifest


def add_arguments(parser) -> None:
    """The `mix` action of `eve-ms data` (the command is `eve_ms.data.command`)."""
    parser.add_argument("recipe", help="recipe yaml: image_root, seed, check, sources (see yaml_configs/data/)")
    parser.add_argument("--out", required=True, help="folder for the mixed JSONL and manifest.json")
    parser.add_argument("--workers", type=int, default=1, help="processes running the checks (same output)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(_module=__name__)


def run(args) -> int:
    try:
        recipe = load_recipe(args.recipe)
        manifest = mix(recipe, args.out, workers=args.workers, progress=not args.no_progress)
    except (ValueError, OSError) as err:  # ConfigError and DataError are ValueErrors
        print(f"error: {err}")
        return 2
    totals = manifest["totals"]
    print(f"wrote {os.path.join(args.out, recipe.output)}: {totals['taken']:,} samples from "
          f"{len(manifest['sources'])} sources ({totals['duplicates']:,} duplicates and {totals['skipped']:,} "
          f"bad records left out); manifest: {os.path.join(args.out, MANIFEST_NAME)}")
    return 0
