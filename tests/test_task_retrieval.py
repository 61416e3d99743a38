"""LRA Retrieval: the official AAN TSVs, two documents per example, SPT on the documents, and the
two-tower classifier end to end."""

from __future__ import annotations

import numpy as np
import pytest

from recipes import experiment
from tasks.base import DataError, DualSplit
from tasks.retrieval import Retrieval
from tests.conftest import make_cfg
from tests.fixtures.lra import aan_line, write_aan

TINY = ["arch.d_model=16", "arch.n_layers=1", "arch.n_heads=2", "progress=false", "finetune.batch_size=4",
        "pretrain.batch_size=4", "finetune.max_steps=3", "pretrain.epochs=1", "task.max_len=48"]


def rows(path):
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, _, _, t1, t2 = line.split("\t")
        out.append((t1.encode(), t2.encode(), int(float(label))))
    return out


def test_pairs_are_read_as_two_byte_documents(tmp_path):
    root = write_aan(tmp_path, n=8)
    splits = Retrieval(data_dir=str(root), max_len=30).splits(tmp_path / "cache")
    for split, name in (("train", "train"), ("val", "eval"), ("test", "test")):
        data = splits[split]
        assert isinstance(data, DualSplit) and len(data) == 8
        expected = rows(root / f"new_aan_pairs.{name}.tsv")
        ids, mask, labels = data.batch(np.arange(8), pad_id=256)
        assert ids.shape[:2] == (8, 2) and mask.shape == ids.shape
        for i, (t1, t2, label) in enumerate(expected):
            for side, text in ((0, t1), (1, t2)):
                got = ids[i, side][mask[i, side]].numpy().astype(np.uint8).tobytes()
                assert got == text[:30]
            assert labels[i] == label
        docs = data.documents()  # what SPT pretrains on: every document on its own
        assert len(docs) == 16 and docs.lengths().max() <= 30


@pytest.mark.parametrize("line, expected", [
    ("1.0\tA\tB\tonly four", r"new_aan_pairs.eval.tsv:2: expected 5 tab-separated fields"),
    (aan_line("yes", "A", "B", "x", "y"), r"new_aan_pairs.eval.tsv:2: label b'yes' is not 0 or 1"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, expected):
    root = write_aan(tmp_path, n=2)
    path = root / "new_aan_pairs.eval.tsv"
    path.write_text(path.read_text().splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(DataError, match=expected):
        Retrieval(data_dir=str(root)).splits(tmp_path / "cache")


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="set task.data_dir=/path/to/tsv_data holding new_aan_pairs.train.tsv"):
        Retrieval().splits(tmp_path / "cache")
    root = write_aan(tmp_path, n=2)
    (root / "new_aan_pairs.test.tsv").unlink()
    with pytest.raises(DataError, match="new_aan_pairs.test.tsv not found"):
        Retrieval(data_dir=str(root)).splits(tmp_path / "cache")


def test_spt_pretrains_on_documents_then_fine_tunes_two_towers(tmp_path):
    root = write_aan(tmp_path, n=8)
    result = experiment.run(make_cfg(["task=retrieval", "recipe=spt", f"task.data_dir={root}", *TINY], tmp_path),
                            tmp_path / "run")
    assert result["status"] == "ok" and result["pretrain"]["mask_ratio"] == 0.15
    # One pretraining epoch over 8 pairs = 16 documents in batches of 4: 4 steps (pairs would take 2).
    assert result["steps"] == {"pretrain": 4, "finetune": 3}
    # One shared tower: everything but the backbone is the byte embedding and the [u, v, u*v, u-v] MLP.
    d, head = 16, (4 * 16 * 16 + 16) + (16 * 2 + 2)
    assert result["params"]["total"] - result["params"]["backbone"] == 258 * d + head
