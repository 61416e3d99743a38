"""ListOps (Nangia & Bowman 2018) as in the Long Range Arena (Tay et al. 2020).

An example is a nested prefix expression over the digits 0-9, e.g. `[MAX 2 9 [MIN 4 7 ] 0 ]`; the
label is its value (10 classes). Operators: MAX, MIN, MED (median, as int(numpy.median), so an
even count floors the mean of the two middle values) and SM (sum mod 10).

Two sources, one tokenization:
- the generator (offline default): the LRA process — a node at depth < max_depth is an operator
  with probability 0.25 (else a digit); an operator takes randint(2, max_args) arguments; trees
  whose token count is strictly between min_length and max_length are kept, duplicates dropped,
  and the first n_train / n_val / n_test form the splits;
- the official LRA release (`task.data_dir=.../listops-1000`): `basic_{train,val,test}.tsv`, tab
  separated with header `Source\tTarget`, Source written with the LRA's binary-tree parentheses,
  e.g. `( ( ( [MAX 2 ) 9 ) ] )`. Parentheses carry no information and are dropped, as in the
  S4 / Amos et al. pipeline. (LRA's own tfds tokenizer keeps alphanumerics only, so it drops `]`
  and the `[` of each operator too; we keep `]`, which marks where each argument list ends.)
"""

from __future__ import annotations

import csv
import logging
import random
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tasks.base import DataError, Task, TaskSpec, check_mask_ratio

log = logging.getLogger(__name__)

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
PAD, MASK = "<pad>", "<mask>"
VOCAB = (PAD, MASK, *(str(d) for d in range(10)), *OPERATORS, END)
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
OPERATOR_P = 0.25  # chance that a node above max_depth is an operator rather than a digit
OFFICIAL_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
RELEASE_HINT = "the LRA release (lra_release/listops-1000/, https://github.com/google-research/long-range-arena)"

# A tree is an int (a digit) or a tuple (operator, [children]).


def generate_tree(rng: random.Random, depth: int, max_depth: int, max_args: int, limit: float = float("inf")):
    """-> (tree, token count), the LRA process. Root is called with depth=1, as in LRA.

    Generation stops early (tree None) once the count reaches `limit`: such trees are rejected by
    the length filter anyway, and big rejected trees dominated the generation time. Kept trees
    have exactly the LRA distribution; only which random draws produce them changes.
    """
    r = rng.random() if depth < max_depth else 1.0
    if r > OPERATOR_P:
        return rng.choice(range(10)), 1
    children, length = [], 2  # the operator token and its closing bracket
    for _ in range(rng.randint(2, max_args)):
        child, n = generate_tree(rng, depth + 1, max_depth, max_args, limit - length)
        length += n
        if child is None or length >= limit:
            return None, length
        children.append(child)
    return (rng.choice(OPERATORS), children), length  # LRA draws the operator after the children


def evaluate(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, children = tree
    values = [evaluate(c) for c in children]
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[MED":
        return int(np.median(values))
    return sum(values) % 10


def tokens(tree) -> list[str]:
    """Flat prefix tokens, e.g. ['[MAX', '2', '9', ']']."""
    if isinstance(tree, int):
        return [str(tree)]
    op, children = tree
    return [op, *(t for c in children for t in tokens(c)), END]


def official_string(tree) -> str:
    """The LRA release's Source text: the expression as left-nested pairs, each in parentheses.

    [MAX 2 9 ] is ((('[MAX', 2), 9), ']') and prints as `( ( ( [MAX 2 ) 9 ) ] )`.
    """
    if isinstance(tree, int):
        return str(tree)
    op, children = tree
    text = op
    for part in [*(official_string(c) for c in children), END]:
        text = f"( {text} {part} )"
    return text


def tokenize(source: str) -> list[str]:
    """Source text in either form -> tokens; parentheses are layout only."""
    return [t for t in source.replace("(", " ").replace(")", " ").split()]


class ListOps(Task):
    """10-way classification of ListOps expressions. See the module docstring for the sources."""

    def __init__(
        self,
        *,
        name: str = "listops",
        data_dir: str | None = None,
        n_train: int = 96_000,
        n_val: int = 2_000,
        n_test: int = 2_000,
        min_length: int = 500,
        max_length: int = 2_000,
        max_depth: int = 10,
        max_args: int = 10,
        data_seed: int = 0,
        max_len: int = 2_000,
        mask_ratio: float = 0.1,
    ):
        for key, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("max_len", max_len),
                           ("max_depth", max_depth), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"task.{key}={value!r} must be a positive integer")
        if max_args < 2:
            raise ValueError(f"task.max_args={max_args} must be >= 2 (an operator takes at least two arguments)")
        if not 0 <= min_length < max_length - 1:
            raise ValueError(f"task.min_length={min_length} must be >= 0 and < max_length - 1 = {max_length - 1}"
                             " (lengths are kept when strictly between the two)")
        check_mask_ratio(mask_ratio)
        self.data_dir = None if data_dir in (None, "") else Path(data_dir).expanduser()
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.gen = dict(min_length=min_length, max_length=max_length, max_depth=max_depth, max_args=max_args,
                        data_seed=data_seed)
        self.spec = TaskSpec(name=name, kind="tokens", vocab_size=len(VOCAB), max_len=max_len, n_classes=10,
                             pad_id=TOKEN_ID[PAD], mask_id=TOKEN_ID[MASK], spt_mask_ratio=mask_ratio)

    def cache_key(self) -> dict:
        if self.data_dir is None:
            return {"source": "generated", **self.gen, **self.sizes, "max_len": self.spec.max_len}
        files = [self.official_path(s) for s in OFFICIAL_FILES]
        return {"source": "official", "max_len": self.spec.max_len,
                "files": [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]}

    def official_path(self, split: str) -> Path:
        if not self.data_dir.is_dir():
            raise DataError(f"task.data_dir={self.data_dir} is not a directory: point it at {RELEASE_HINT}, "
                            "or leave it unset to generate ListOps offline")
        path = self.data_dir / OFFICIAL_FILES[split]
        if not path.is_file():
            raise DataError(f"{path} not found: expected {', '.join(OFFICIAL_FILES.values())} from {RELEASE_HINT}")
        return path

    def build(self) -> dict:
        import datasets

        if self.data_dir is None:
            rows = self.generate()
        else:
            rows = {split: self.read_official(self.official_path(split)) for split in OFFICIAL_FILES}
        out = {}
        for split, examples in rows.items():
            ids, labels, cut = [], [], 0
            for toks, label in examples:
                cut += len(toks) > self.spec.max_len
                ids.append([TOKEN_ID[t] for t in toks[: self.spec.max_len]])
                labels.append(label)
            if cut:
                log.warning("listops %s: %d of %d examples truncated to max_len=%d", split, cut, len(ids),
                            self.spec.max_len)
            features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int8")),
                                          "label": datasets.Value("int64")})
            out[split] = datasets.Dataset.from_dict({"input_ids": ids, "label": labels}, features=features)
        return out

    def generate(self) -> dict[str, list[tuple[list[str], int]]]:
        """Unique trees in generation order, split train | val | test. Deterministic in the params."""
        g = self.gen
        rng = random.Random(g["data_seed"])
        total = sum(self.sizes.values())
        seen, kept, tries = set(), [], 0
        with tqdm(total=total, desc="generate listops", leave=False, disable=not self.progress) as bar:
            while len(kept) < total:
                tries += 1
                if tries > 1000 * total + 100_000:
                    raise DataError(f"ListOps generator kept only {len(kept)} of {total} unique trees with lengths in "
                                    f"({g['min_length']}, {g['max_length']}); widen the length range or lower sizes")
                tree, length = generate_tree(rng, 1, g["max_depth"], g["max_args"], g["max_length"])
                if tree is None or not g["min_length"] < length < g["max_length"]:
                    continue
                toks = tokens(tree)
                key = " ".join(toks)
                if key in seen:
                    continue
                seen.add(key)
                kept.append((toks, evaluate(tree)))
                bar.update()
        n_tr, n_va = self.sizes["train"], self.sizes["val"]
        return {"train": kept[:n_tr], "val": kept[n_tr : n_tr + n_va], "test": kept[n_tr + n_va :]}

    @staticmethod
    def read_official(path: Path) -> list[tuple[list[str], int]]:
        """Parse one official TSV; any malformed line is an error naming file and line."""
        examples = []
        with open(path, newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if header != ["Source", "Target"]:
                raise DataError(f"{path}:1: expected the header 'Source<TAB>Target', found {header!r}; "
                                f"is this a ListOps file from {RELEASE_HINT}?")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if len(row) != 2:
                    raise DataError(f"{where}: expected 2 tab-separated fields (Source, Target), found {len(row)}")
                toks = tokenize(row[0])
                bad = next((t for t in toks if t not in TOKEN_ID or t in (PAD, MASK)), None)
                if bad is not None or not toks:
                    raise DataError(f"{where}: unknown ListOps token {bad!r}" if toks else f"{where}: empty Source")
                if not row[1].strip().isdigit() or not 0 <= int(row[1]) <= 9:
                    raise DataError(f"{where}: Target {row[1]!r} is not a digit 0-9")
                examples.append((toks, int(row[1])))
        if not examples:
            raise DataError(f"{path}: no examples after the header")
        return examples
