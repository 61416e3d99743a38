"""ListOps: generator faithfulness, determinism, caching, and the official TSV loader."""

from __future__ import annotations

import random
import statistics

import numpy as np
import pytest

from tasks.base import DataError
from tasks.listops import TOKEN_ID, VOCAB, ListOps, generate_tree, official_string, tokenize, tokens


def reference_value(toks: list[str]) -> int:
    """Evaluate prefix tokens with an explicit stack — independent of the generator's tree walk."""
    stack: list = []
    for t in toks:
        if t.startswith("["):
            stack.append([t])
        elif t == "]":
            op, *args = stack.pop()
            if op == "[MIN":
                v = min(args)
            elif op == "[MAX":
                v = max(args)
            elif op == "[MED":
                v = int(statistics.median(args))
            elif op == "[SM":
                v = sum(args) % 10
            else:
                raise AssertionError(op)
            if stack:
                stack[-1].append(v)
            else:
                stack.append(v)
        else:
            if stack and isinstance(stack[-1], list):
                stack[-1].append(int(t))
            else:
                stack.append(int(t))
    assert len(stack) == 1
    return stack[0]


def small(**kw) -> ListOps:
    args = dict(n_train=300, n_val=50, n_test=50, min_length=10, max_length=60, max_len=60)
    return ListOps(**{**args, **kw})


def decode(split, i) -> list[str]:
    return [VOCAB[t] for t in split.tokens[split.offsets[i] : split.offsets[i + 1]]]


def test_labels_match_independent_evaluation_and_lengths_in_bounds(tmp_path):
    splits = small().splits(tmp_path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "val": 50, "test": 50}
    seen = set()
    for split in splits.values():
        lengths = split.lengths()
        assert lengths.min() > 10 and lengths.max() < 60  # strictly between, as in LRA
        for i in range(len(split)):
            toks = decode(split, i)
            assert reference_value(toks) == split.labels[i]
            seen.add(" ".join(toks))
    assert len(seen) == 400  # no duplicates within or across splits
    assert len(set(splits["train"].labels.tolist())) >= 5


def test_median_of_even_count_floors_like_lra():
    # int(np.median([1, 2, 4, 9])) = int(3.0) = 3; [MED 4 5 ] -> int(4.5) = 4
    assert reference_value(tokenize("[MED 1 2 4 9 ]")) == 3
    from tasks.listops import evaluate

    assert evaluate(("[MED", [4, 5])) == 4
    assert evaluate(("[SM", [9, 8, ("[MAX", [1, 7])])) == 4


def test_generator_is_deterministic_and_seeded(tmp_path):
    a = small().generate()
    b = small().generate()
    c = small(data_seed=1).generate()
    assert a == b
    assert a["train"] != c["train"]


def test_early_stop_keeps_exactly_the_trees_the_full_process_keeps():
    """From the same random state, the bounded generator returns the very tree the unbounded one
    draws whenever that tree is under the limit, and gives up only on trees at or over it."""
    rng = random.Random(0)
    for _ in range(1500):
        state = rng.getstate()
        bounded, n_bounded = generate_tree(rng, 1, 6, 6, 40)
        after_bounded = rng.getstate()
        rng.setstate(state)
        full, n_full = generate_tree(rng, 1, 6, 6)
        assert len(tokens(full)) == n_full
        if n_full < 40:
            assert bounded == full and n_bounded == n_full and rng.getstate() == after_bounded
        else:
            assert bounded is None


def test_operator_probability_is_lra_value_p():
    """A node below max_depth is an operator with probability 0.25 (LRA's VALUE_P), else a digit."""
    rng = random.Random(1)
    leaves = sum(generate_tree(rng, 1, 10, 10, limit=2)[0] is not None for _ in range(20_000))
    assert abs(leaves / 20_000 - 0.75) < 0.015  # ~5 standard deviations
    # at max_depth every node is a digit
    assert all(isinstance(generate_tree(rng, 10, 10, 10)[0], int) for _ in range(200))


def test_official_string_format_and_tokenization():
    tree = ("[MAX", [2, 9])
    assert official_string(tree) == "( ( ( [MAX 2 ) 9 ) ] )"
    nested = ("[SM", [("[MIN", [4, 7]), 0, 3])
    assert tokenize(official_string(nested)) == tokens(nested) == ["[SM", "[MIN", "4", "7", "]", "0", "3", "]"]


def write_official(folder, rows_by_split):
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in rows_by_split.items():
        lines = ["Source\tTarget"] + [f"{src}\t{label}" for src, label in rows]
        (folder / f"basic_{split}.tsv").write_text("\n".join(lines) + "\n")


def test_official_tsv_loader_matches_generated_tokenization(tmp_path):
    """Generated data written in the LRA release format loads back to the same ids and labels."""
    task = small()
    rows = {split: [(official_string(parse(toks)), label) for toks, label in examples]
            for split, examples in task.generate().items()}
    data_dir = tmp_path / "listops-1000"
    write_official(data_dir, rows)
    official = small(data_dir=str(data_dir)).splits(tmp_path / "cache")
    from_gen = task.splits(tmp_path / "cache")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(official[split].tokens, from_gen[split].tokens)
        np.testing.assert_array_equal(official[split].offsets, from_gen[split].offsets)
        np.testing.assert_array_equal(official[split].labels, from_gen[split].labels)


def parse(toks: list[str]):
    """Tokens -> generator tree (int | (op, children))."""
    stack: list = [[None, []]]
    for t in toks:
        if t.startswith("["):
            stack.append([t, []])
        elif t == "]":
            op, children = stack.pop()
            stack[-1][1].append((op, children))
        else:
            stack[-1][1].append(int(t))
    return stack[0][1][0]


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("basic_val.tsv", None, "basic_val.tsv not found"),
        ("basic_train.tsv", "src\tlabel\n[MAX 1 2 ]\t2\n", "basic_train.tsv:1: expected the header"),
        ("basic_test.tsv", "Source\tTarget\n( [MAX 1 ) 2 ]\t2\n( [FOO 1 ) 2 ]\t2\n",
         "basic_test.tsv:3: unknown ListOps token '[FOO'"),
        ("basic_test.tsv", "Source\tTarget\n( [MAX 1 ) 2 ]\t12\n", "basic_test.tsv:2: Target '12'"),
        ("basic_val.tsv", "Source\tTarget\n( [MAX 1 ) 2 ]\n", "basic_val.tsv:2: expected 2 tab-separated"),
        ("basic_val.tsv", "Source\tTarget\n", "basic_val.tsv: no examples"),
    ],
)
def test_official_loader_errors_name_file_and_line(tmp_path, name, content, expected):
    data_dir = tmp_path / "lo"
    good = [("( ( ( [MAX 2 ) 9 ) ] )", 9)]
    write_official(data_dir, {"train": good, "val": good, "test": good})
    if content is None:
        (data_dir / name).unlink()
    else:
        (data_dir / name).write_text(content)
    with pytest.raises(DataError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        small(data_dir=str(data_dir)).splits(tmp_path / "cache")


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        small(data_dir=str(tmp_path / "nowhere")).splits(tmp_path / "cache")


def test_cache_reused_until_parameters_change(tmp_path, monkeypatch):
    small().splits(tmp_path)
    built = []
    original = ListOps.build
    monkeypatch.setattr(ListOps, "build", lambda self: built.append(1) or original(self))
    assert len(small().splits(tmp_path)["train"]) == 300
    assert built == []  # same parameters: read from the cache
    assert len(small(n_train=301).splits(tmp_path)["train"]) == 301
    assert built == [1]  # a new parameter set builds anew


def test_long_official_examples_are_truncated_and_logged(tmp_path, caplog):
    data_dir = tmp_path / "lo"
    long = official_string(("[SM", list(range(10)) * 2))  # 22 tokens
    write_official(data_dir, {"train": [(long, 0)], "val": [(long, 0)], "test": [(long, 0)]})
    task = ListOps(data_dir=str(data_dir), max_len=16)
    with caplog.at_level("WARNING"):
        splits = task.splits(tmp_path / "cache")
    assert splits["train"].lengths().tolist() == [16]
    assert "truncated to max_len=16" in caplog.text


@pytest.mark.parametrize("kw, msg", [({"n_train": 0}, "n_train"), ({"min_length": 59, "max_length": 60}, "min_length"),
                                     ({"max_args": 1}, "max_args")])
def test_impossible_parameters_rejected(kw, msg):
    with pytest.raises(ValueError, match=msg):
        small(**kw)


def test_vocabulary_has_pad_and_mask():
    spec = small().spec
    assert VOCAB[spec.pad_id] == "<pad>" and VOCAB[spec.mask_id] == "<mask>"
    assert spec.vocab_size == len(TOKEN_ID) == 17 and spec.n_classes == 10
