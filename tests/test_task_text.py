"""LRA Text: the aclImdb tree and the hub layout give the same bytes; validation choices; errors;
a tiny SPT run."""

from __future__ import annotations

import numpy as np
import pytest

from recipes import experiment
from tasks.base import DataError
from tasks.text import Text
from tests.conftest import make_cfg
from tests.fixtures.lra import write_imdb

TINY = ["arch.d_model=16", "arch.n_layers=1", "arch.n_heads=2", "progress=false", "finetune.batch_size=4",
        "pretrain.batch_size=4", "finetune.max_steps=3", "pretrain.max_steps=3", "task.max_len=64"]


def decoded(split) -> list[tuple[bytes, int]]:
    return [(split.tokens[split.offsets[i] : split.offsets[i + 1]].astype(np.uint8).tobytes(), int(split.labels[i]))
            for i in range(len(split))]


def reviews(root, split) -> list[tuple[bytes, int]]:
    return sorted((f.read_bytes(), int(cls == "pos")) for cls in ("pos", "neg") for f in (root / split / cls).glob("*"))


def test_reviews_are_utf8_bytes_with_labels_and_lra_validation(tmp_path, caplog):
    root = write_imdb(tmp_path)
    with caplog.at_level("INFO"):
        splits = Text(data_dir=str(root), max_len=50).splits(tmp_path / "cache")
    assert sorted(decoded(splits["train"])) == sorted((b[:50], y) for b, y in reviews(root, "train"))
    assert sorted(decoded(splits["test"])) == sorted((b[:50], y) for b, y in reviews(root, "test"))
    assert decoded(splits["val"]) == decoded(splits["test"])  # LRA: the test set doubles as validation
    assert splits["train"].tokens.dtype == np.uint8 and max(splits["train"].lengths()) == 50
    assert "reviews truncated to max_len=50 bytes" in caplog.text
    whole = Text(data_dir=str(root)).splits(tmp_path / "c2")["train"]
    assert "caf\u00e9".encode() in b"".join(b for b, _ in decoded(whole))  # UTF-8 bytes, not characters


def test_held_out_validation_slice_of_train(tmp_path):
    root = write_imdb(tmp_path, n_per_class=10)
    splits = Text(data_dir=str(root), val_from="train", val_fraction=0.25).splits(tmp_path / "cache")
    train, val = decoded(splits["train"]), decoded(splits["val"])
    assert len(val) == 5 and len(train) == 15
    assert sorted(train + val) == reviews(root, "train")  # a partition of train; test untouched
    assert sorted(decoded(splits["test"])) == reviews(root, "test")


def test_hub_layout_converts_to_the_same_bytes(tmp_path, monkeypatch):
    import datasets

    root = write_imdb(tmp_path)

    def hub_split(split):
        rows = reviews(root, split)
        return datasets.Dataset.from_dict({"text": [b.decode("utf-8") for b, _ in rows],
                                           "label": [y for _, y in rows]})

    hub = datasets.DatasetDict({"train": hub_split("train"), "test": hub_split("test"),
                                "unsupervised": hub_split("test")})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: hub if name == "imdb" else None)
    from_hub = Text(source="hub", max_len=40).splits(tmp_path / "cache")
    from_files = Text(data_dir=str(root), max_len=40).splits(tmp_path / "cache")
    for split in ("train", "val", "test"):
        assert sorted(decoded(from_hub[split])) == sorted(decoded(from_files[split]))


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="set task.data_dir=/path/to/aclImdb .*aclImdb_v1.tar.gz.*task.source=hub"):
        Text().splits(tmp_path / "cache")
    root = write_imdb(tmp_path)
    for f in (root / "test" / "neg").glob("*"):
        f.unlink()
    (root / "test" / "neg").rmdir()
    with pytest.raises(DataError, match=r"test/neg not found: expected aclImdb/\{train,test\}/\{pos,neg\}/\*.txt"):
        Text(data_dir=str(root)).splits(tmp_path / "cache")
    with pytest.raises(ValueError, match="task.val_from='dev'"):
        Text(val_from="dev")


def test_spt_end_to_end(tmp_path):
    root = write_imdb(tmp_path)
    result = experiment.run(make_cfg(["task=text", "recipe=spt", f"task.data_dir={root}", *TINY], tmp_path),
                            tmp_path / "run")
    assert result["status"] == "ok" and result["pretrain"]["mask_ratio"] == 0.15
    assert result["pretrain"]["pixel_loss"] is None
