"""LRA Pathfinder and Path-X (Linsley et al. 2018; Tay et al. 2020): are the two dots connected?

An example is a square grey image read row by row as res*res pixels (Pathfinder res 32: 1024
tokens; Path-X res 128: 16,384 tokens), label 1 when one dashed curve joins the two dots.

Two sources:
- the official LRA release (`task.data_dir=.../lra_release`): the tree
  `pathfinder{res}/{difficulty}/metadata/*.npy` — text files despite the extension, one image per
  line, whitespace-separated: field 0 the image folder (`imgs/<k>`), field 1 the file
  (`sample_<n>.png`), field 3 the label — with the images at `pathfinder{res}/{difficulty}/<field0>/<field1>`.
  Difficulty is the contour length: curv_baseline (easy), curv_contour_length_9,
  curv_contour_length_14 (hard, the LRA task). An image that cannot be read is skipped and
  counted in the log (the Path-X release has a few). The examples are split 80/10/10 by a seeded
  permutation (`data_seed`), as in the S4 / Amos et al. pipelines.
- the generator (offline default, res 16/32/64/128): see `generate_image`.

The generator draws, on a black square: two "main" dashed curves of the same length, a few
shorter dashed distractor curves, and two dots (3x3 squares). Positive: the dots sit on the two
ends of one main curve. Negative: one dot on an end of each main curve. Curves never cross and
keep a wider gap to each other than between their own dashes (SEP), so a curve can be followed
only along its own dashes.
Shortcuts are closed by construction: both classes hold the same curves (count, lengths, dash
pattern, hence ink), and examples are accepted so that the distance between the dots has the same
histogram in both classes (`balance`). `python -m tasks.pathfinder_shortcut` checks that a
logistic regression on image statistics stays near chance.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tasks.base import (
    DataError,
    Task,
    TaskSpec,
    check_encoder,
    check_mask_ratio,
    check_sizes,
    file_identity,
    ids_dataset,
    seeded_subset,
)

log = logging.getLogger(__name__)

LEVELS = 256
DIFFICULTIES = ("curv_baseline", "curv_contour_length_9", "curv_contour_length_14")
OFFICIAL_RESOLUTIONS = (32, 64, 128, 256)
GENERATOR_RESOLUTIONS = (16, 32, 64, 128)
HINT = "the LRA release (lra_release.gz from https://github.com/google-research/long-range-arena), unpacked"
DASH, GAP = 2, 1  # pixels on, pixels off along a curve
MAX_TURN = 0.6    # radians a curve may turn per unit step: smooth, yet curly enough that a path
# between the dots strays from the straight segment joining them (a cue the shortcut check measures)
# Pixels of two different curves (dots included) are at least SEP apart (Chebyshev distance), while
# the dashes of one curve are 2 apart (GAP = 1): linking lit pixels closer than SEP recovers each
# curve exactly, so the label is well defined and checkable (tests do).
SEP = 3


def geometry(res: int) -> dict:
    """Generator sizes for a resolution: main-curve and distractor lengths (in steps), count.

    Main lengths are DASH mod (DASH + GAP): the dash pattern then reads the same from both ends
    (on on off ... on on), so a dot covers the same ink at either end — otherwise the ink count
    would tell a dot on a start from one on an end, and with it the label."""
    main = {16: 8, 32: 20, 64: 32, 128: 56}[res]
    assert main % (DASH + GAP) == DASH
    return {"main": main, "distractor": main // 2, "n_distractors": {16: 1, 32: 3, 64: 6, 128: 12}[res]}


def _grow(rng: random.Random, blocked: set, res: int, length: int, margin: int) -> list[tuple[int, int]] | None:
    """One smooth curve of `length` distinct 8-connected pixels avoiding `blocked`, or None."""
    lo, hi = margin, res - 1 - margin
    x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
    theta = rng.uniform(0, 2 * math.pi)
    pts = [(round(x), round(y))]
    if pts[0] in blocked:
        return None
    while len(pts) < length:
        for _ in range(8):
            th = theta + rng.uniform(-MAX_TURN, MAX_TURN)
            nx, ny = x + math.cos(th), y + math.sin(th)
            p = (round(nx), round(ny))
            if p == pts[-1]:  # a sub-pixel move: no new pixel, keep walking
                x, y, theta = nx, ny, th
                break
            if not (lo <= p[0] <= hi and lo <= p[1] <= hi) or p in blocked:
                continue
            # no touching its own earlier pixels, so the curve never forms a blob or a loop
            if any(abs(p[0] - q[0]) <= 1 and abs(p[1] - q[1]) <= 1 for q in pts[:-2]):
                continue
            x, y, theta = nx, ny, th
            pts.append(p)
            break
        else:
            return None
    return pts


def _block(blocked: set, pts, radius: int) -> None:
    for px, py in pts:
        for dx in range(-radius, radius + 1):
            for dy in range(-radius, radius + 1):
                blocked.add((px + dx, py + dy))


def generate_image(rng: random.Random, res: int, label: int, tries: int = 1000) -> tuple[np.ndarray, float]:
    """-> (image (res, res) uint8 in {0, 255}, distance between the dots) with the given label.
    Layouts that break a rule (a curve stuck, a dot touching another curve) are redrawn."""
    geo = geometry(res)
    for _ in range(tries):
        blocked: set = set()
        mains = []
        for _ in range(2):
            curve = _grow(rng, blocked, res, geo["main"], margin=2)
            if curve is None:
                break
            mains.append(curve)
            _block(blocked, curve, SEP - 1)
            _block(blocked, (curve[0], curve[-1]), SEP)  # room for the dots (one pixel around the end)
        if len(mains) < 2:
            continue
        if label == 1:
            dots = [mains[0][0], mains[0][-1]]
        else:
            dots = [rng.choice((mains[0][0], mains[0][-1])), rng.choice((mains[1][0], mains[1][-1]))]
        # A dot must not touch the other main curve (possible when that curve was grown first).
        own = {dots[0]: mains[0], dots[1]: mains[0] if label == 1 else mains[1]}
        if any(max(abs(d[0] - q[0]), abs(d[1] - q[1])) <= SEP for d, c in own.items()
               for other in mains if other is not c for q in other):
            continue
        # Nor the other dot: their 3x3 squares keep SEP between them (checked in both classes alike).
        if max(abs(dots[0][0] - dots[1][0]), abs(dots[0][1] - dots[1][1])) < SEP + 2:
            continue
        distractors = []
        for _ in range(geo["n_distractors"]):
            for _ in range(20):
                curve = _grow(rng, blocked, res, geo["distractor"], margin=1)
                if curve is not None:
                    distractors.append(curve)
                    _block(blocked, curve, SEP - 1)
                    break
        if len(distractors) < geo["n_distractors"]:
            continue
        img = np.zeros((res, res), dtype=np.uint8)
        for curve in (*mains, *distractors):
            for k, (px, py) in enumerate(curve):
                if k % (DASH + GAP) < DASH:
                    img[py, px] = 255
        for px, py in dots:
            img[py - 1 : py + 2, px - 1 : px + 2] = 255
        return img, math.dist(dots[0], dots[1])
    raise DataError(f"pathfinder generator: no valid image at res {res} after {tries} tries")


def generate(n: int, res: int, seed: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (images (n, res, res) uint8, labels (n,) int64, dot distances (n,)), balanced.

    Labels are drawn at random and examples are kept in pairs: at every dot distance (dots sit on
    pixels, so the squared distance is an exact integer) there are as many positives as
    negatives, so the two classes have the same distance histogram and the distance alone says
    nothing about the label. Negatives at distances no positive reaches are never used.
    """
    rng = random.Random(seed)
    pending: dict[tuple[int, int], list] = {}  # (label, squared distance) -> examples awaiting a partner
    kept: list[tuple[int, np.ndarray, int, float]] = []  # (order drawn, image, label, distance)
    drawn = 0
    with tqdm(total=n, desc=f"generate pathfinder{res}", leave=False, disable=not progress) as bar:
        while len(kept) < n:
            label = rng.randrange(2)
            img, dist = generate_image(rng, res, label)
            b = round(dist * dist)
            drawn += 1
            partners = pending.get((1 - label, b))
            if partners:
                kept.extend([partners.pop(0), (drawn, img, label, dist)])
                bar.update(2)
            elif len(pending.setdefault((label, b), [])) < 4:  # a few in waiting; more would only use memory
                pending[(label, b)].append((drawn, img, label, dist))
    kept = sorted(kept[:n], key=lambda k: k[0])  # the order drawn: labels come in random order
    return (np.stack([k[1] for k in kept]), np.asarray([k[2] for k in kept], dtype=np.int64),
            np.asarray([k[3] for k in kept]))


class Pathfinder(Task):
    """Binary classification of Pathfinder images as pixel sequences. See the module docstring."""

    def __init__(
        self,
        *,
        name: str = "pathfinder",
        resolution: int = 32,
        difficulty: str = "curv_contour_length_14",
        data_dir: str | None = None,
        n_train: int | None = 8000,
        n_val: int | None = 1000,
        n_test: int | None = 1000,
        data_seed: int = 0,
        mask_ratio: float = 0.5,
        pixel_loss: str = "ce",
        encoder: str = "linear",
    ):
        check_sizes(n_train=n_train, n_val=n_val, n_test=n_test, resolution=resolution)
        self.data_dir = None if data_dir in (None, "") else Path(data_dir).expanduser()
        if self.data_dir is None:
            if resolution not in GENERATOR_RESOLUTIONS:
                raise ValueError(f"task.resolution={resolution}: the generator draws {GENERATOR_RESOLUTIONS}; "
                                 "set task.data_dir to read another resolution from the LRA release")
            if None in (n_train, n_val, n_test):
                raise ValueError("task.n_train, n_val and n_test must be set to generate Pathfinder "
                                 "(null = all applies to the official release only)")
        elif resolution not in OFFICIAL_RESOLUTIONS:
            raise ValueError(f"task.resolution={resolution} is not one of the release's {OFFICIAL_RESOLUTIONS}")
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"task.difficulty={difficulty!r} is not one of {', '.join(DIFFICULTIES)}")
        check_mask_ratio(mask_ratio)
        check_encoder(encoder)
        self.resolution, self.difficulty, self.data_seed = resolution, difficulty, data_seed
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.encoder_kind = encoder
        self.spec = TaskSpec(name=name, kind="pixels", vocab_size=LEVELS + 2, max_len=resolution * resolution,
                             n_classes=2, pad_id=LEVELS, mask_id=LEVELS + 1, spt_mask_ratio=mask_ratio,
                             pixel_levels=LEVELS, spt_pixel_loss=pixel_loss)

    # -- the official release ------------------------------------------------------------------
    def base_dir(self) -> Path:
        if not self.data_dir.is_dir():
            raise DataError(f"task.data_dir={self.data_dir} is not a directory: point it at {HINT}, "
                            "or leave it unset to generate Pathfinder offline")
        base = self.data_dir / f"pathfinder{self.resolution}" / self.difficulty
        if not (base / "metadata").is_dir():
            raise DataError(f"{base / 'metadata'} not found: expected pathfinder{self.resolution}/"
                            f"{{{','.join(DIFFICULTIES)}}}/metadata/*.npy under task.data_dir, from {HINT}")
        return base

    def metadata_files(self) -> list[Path]:
        base = self.base_dir()
        files = sorted(base.joinpath("metadata").glob("*.npy"), key=lambda p: (len(p.stem), p.stem))
        if not files:
            raise DataError(f"{base / 'metadata'}: no *.npy metadata files; expected those of {HINT}")
        return files

    def read_metadata(self) -> list[tuple[Path, int]]:
        """-> [(image path, label)] from every metadata file; malformed lines name file and line."""
        base, rows = self.base_dir(), []
        for meta in self.metadata_files():
            for n, line in enumerate(meta.read_text(errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                fields = line.split()
                if len(fields) < 4 or fields[3] not in ("0", "1"):
                    raise DataError(f"{meta}:{n}: expected 'imgs/<k> sample_<n>.png <x> <label 0|1> ...', "
                                    f"found {line[:80]!r}")
                rows.append((base / fields[0] / fields[1], int(fields[3])))
        if not rows:
            raise DataError(f"{base / 'metadata'}: the metadata files list no images")
        return rows

    def read_official(self) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image, UnidentifiedImageError

        rows = self.read_metadata()
        res = self.resolution
        images = np.zeros((len(rows), res * res), dtype=np.uint8)
        ok = np.zeros(len(rows), dtype=bool)
        bad: list[str] = []
        for i, (path, _) in enumerate(tqdm(rows, desc=f"read pathfinder{res}", leave=False, disable=not self.progress)):
            try:
                with Image.open(path) as im:
                    pixels = np.asarray(im.convert("L"), dtype=np.uint8)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                bad.append(f"{path} ({type(exc).__name__})")
                continue
            if pixels.shape != (res, res):
                bad.append(f"{path} (size {pixels.shape[1]}x{pixels.shape[0]}, expected {res}x{res})")
                continue
            images[i], ok[i] = pixels.reshape(-1), True
        if bad:
            log.warning("pathfinder%d: skipped %d of %d unreadable images, e.g. %s", res, len(bad), len(rows),
                        "; ".join(bad[:3]))
        if not ok.any():
            raise DataError(f"{self.base_dir()}: none of the {len(rows)} listed images could be read ({bad[0]})")
        labels = np.asarray([label for _, label in rows], dtype=np.int64)
        return images[ok], labels[ok]

    # -- the task ------------------------------------------------------------------------------
    def cache_key(self) -> dict:
        common = {"resolution": self.resolution, **self.sizes, "data_seed": self.data_seed}
        if self.data_dir is None:
            return {"source": "generated", **common, "geometry": geometry(self.resolution), "dash": [DASH, GAP],
                    "max_turn": MAX_TURN, "sep": SEP}
        return {"source": "official", "difficulty": self.difficulty, **common,
                "files": file_identity(self.metadata_files())}

    def build(self) -> dict:
        if self.data_dir is None:
            # Each split drawn on its own seed, so each is exactly balanced in label and distance.
            out = {}
            for i, split in enumerate(("train", "val", "test")):
                images, labels, _ = generate(self.sizes[split], self.resolution, self.data_seed * 1000 + i,
                                             progress=self.progress)
                out[split] = ids_dataset(images.reshape(len(images), -1), labels)
            return out
        else:
            images, labels = self.read_official()
            perm = np.random.default_rng(self.data_seed).permutation(len(labels))
            n_tr, n_va = int(0.8 * len(perm)), int(0.1 * len(perm))
            parts = {"train": perm[:n_tr], "val": perm[n_tr : n_tr + n_va], "test": perm[n_tr + n_va :]}
            index = {s: np.sort(p[seeded_subset(len(p), self.sizes[s], self.data_seed + 1)]) for s, p in parts.items()}
            if min(len(i) for i in index.values()) == 0:
                raise DataError(f"{self.base_dir()}: {len(labels)} readable images are too few for an 80/10/10 "
                                "split with every split non-empty")
        return {split: ids_dataset(images[i], labels[i]) for split, i in index.items()}
