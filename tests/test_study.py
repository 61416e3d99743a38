"""What the CPU study stands on: the reference floors (against an independent solver), nested label
fractions, SPT on the labelled inputs only, the compute-matched control's step count, length-bucketed
batches, and the study preset composing for each of its backbones."""

from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression

from recipes import config_schema, experiment
from recipes.engine.loop import epoch_order, pad_share
from recipes.errors import ConfigError
from recipes.extras import baselines
from tasks.base import DualSplit, TaskSpec, TokenSplit, label_fraction
from tests.conftest import ROOT, make_cfg, tiny

VOCAB, CLASSES = 12, 3
SPEC = TaskSpec(name="bag", kind="tokens", vocab_size=VOCAB, max_len=30, n_classes=CLASSES, pad_id=VOCAB - 1,
                mask_id=VOCAB - 2)


def bag_split(n: int, rng) -> TokenSplit:
    """Random sequences whose label is the most frequent of tokens 0, 1, 2, with 20% of labels
    redrawn: a task a bag of tokens solves well but not perfectly."""
    seqs = [rng.integers(0, VOCAB - 2, rng.integers(5, 30)) for _ in range(n)]
    labels = np.array([np.bincount(s, minlength=VOCAB)[:CLASSES].argmax() for s in seqs])
    noisy = rng.random(n) < 0.2
    labels[noisy] = rng.integers(0, CLASSES, noisy.sum())
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    return TokenSplit(tokens=np.concatenate(seqs), offsets=offsets, labels=labels)


@pytest.fixture(scope="module")
def splits():
    rng = np.random.default_rng(0)
    return {"train": bag_split(400, rng), "val": bag_split(200, rng), "test": bag_split(300, rng)}


def counts_by_hand(split: TokenSplit) -> np.ndarray:
    return np.stack([np.bincount(split.tokens[a:b], minlength=VOCAB) for a, b in zip(split.offsets, split.offsets[1:])])


def test_order_free_baseline_agrees_with_scikit_learn(splits):
    found = baselines.compute(splits, SPEC)
    of = found["order_free"]
    assert of["l2"] in baselines.L2_GRID and of["model"] == baselines.MODEL
    # The same model fit independently: our penalty l2 * ||W||^2 / 2 on the *mean* loss is sklearn's
    # C = 1 / (l2 * N) on the summed loss.
    x = {k: counts_by_hand(s).astype(float) for k, s in splits.items()}
    mean, std = x["train"].mean(0), x["train"].std(0)
    std[std == 0] = 1
    x = {k: (v - mean) / std for k, v in x.items()}
    y = {k: s.labels for k, s in splits.items()}
    n = len(y["train"])

    def sk(l2):
        return LogisticRegression(C=1 / (l2 * n), max_iter=10_000, tol=1e-8).fit(x["train"], y["train"])

    chosen = sk(of["l2"])
    assert abs(chosen.score(x["test"], y["test"]) - of["test_acc"]) <= 0.01
    assert abs(chosen.score(x["train"], y["train"]) - of["train_acc"]) <= 0.01
    best_val = max(sk(l2).score(x["val"], y["val"]) for l2 in baselines.L2_GRID)
    assert of["val_acc"] >= best_val - 0.01  # the strength was chosen on val
    assert of["test_acc"] > 0.6  # it does learn the counts (majority is about 0.4)


def test_majority_and_unigram_floors(splits):
    found = baselines.compute(splits, SPEC)
    top = np.bincount(splits["train"].labels).argmax()
    assert found["majority"] == {"class": top, "val_acc": np.mean(splits["val"].labels == top),
                                 "test_acc": np.mean(splits["test"].labels == top)}
    token = np.bincount(splits["train"].tokens).argmax()
    assert found["unigram"] == {"token": token, "val_acc": np.mean(splits["val"].tokens == token)}
    assert found["n"] == {"train": 400, "val": 200, "test": 300}


def test_counts_of_two_document_examples_sit_side_by_side(splits):
    a, b = splits["train"].subset(np.arange(10)), splits["train"].subset(np.arange(10, 20))
    dual = DualSplit(docs=TokenSplit(tokens=np.concatenate([a.tokens, b.tokens]),
                                     offsets=np.concatenate([a.offsets, b.offsets[1:] + a.offsets[-1]]),
                                     labels=np.concatenate([a.labels, a.labels])), labels=a.labels)
    got = baselines.counts(dual, VOCAB)
    assert got.shape == (10, 2 * VOCAB)
    assert np.array_equal(got, np.concatenate([counts_by_hand(a), counts_by_hand(b)], axis=1))


def test_label_fractions_are_nested_seeded_subsets():
    small, mid, full = (label_fraction(1000, f, 7) for f in (0.05, 0.3, 1.0))
    assert (len(small), len(mid), len(full)) == (50, 300, 1000)
    assert set(small) <= set(mid) <= set(full)
    assert np.array_equal(small, np.sort(small)) and np.array_equal(small, label_fraction(1000, 0.05, 7))
    assert not np.array_equal(small, label_fraction(1000, 0.05, 8))  # another data_seed, another subset
    assert len(label_fraction(10, 0.01, 0)) == 1  # never empty
    for bad in (0, -0.1, 1.5, True, "half"):
        with pytest.raises(ValueError, match="task.train_fraction"):
            label_fraction(10, bad, 0)


def test_subset_keeps_each_example_whole(splits):
    index = np.array([3, 17, 250])
    sub = splits["train"].subset(index)
    for row, i in enumerate(index):
        a, b = splits["train"].offsets[i : i + 2]
        assert np.array_equal(sub.tokens[sub.offsets[row] : sub.offsets[row + 1]], splits["train"].tokens[a:b])
    assert np.array_equal(sub.labels, splits["train"].labels[index])


QUICK = ["finetune.max_steps=3", "finetune.eval_every=3", "pretrain.max_steps=3", "pretrain.eval_every=3"]


@pytest.mark.slow
def test_spt_pretrains_on_the_labelled_inputs_only(tmp_path):
    labelled = experiment.run(make_cfg(tiny("spt", *QUICK, "task.train_fraction=0.25"), tmp_path / "a"),
                              tmp_path / "a" / "run")
    assert labelled["baselines"]["n"]["train"] == 150  # 0.25 of task.n_train=600
    assert labelled["pretrain"]["n_documents"] == 150 and labelled["pretrain"]["inputs"] == "labelled"
    every = experiment.run(make_cfg(tiny("spt", *QUICK, "task.train_fraction=0.25", "pretrain.inputs=all_train"),
                                    tmp_path / "b"), tmp_path / "b" / "run")
    assert every["pretrain"]["n_documents"] == 600 and every["baselines"]["n"]["train"] == 150
    half = experiment.run(make_cfg(tiny("spt", *QUICK, "task.train_fraction=0.5"), tmp_path / "a"),
                          tmp_path / "a" / "run2")
    assert half["pretrain"]["key"] != labelled["pretrain"]["key"]  # another subset, another pretraining
    assert half["baselines"] != labelled["baselines"]


@pytest.mark.slow
def test_compute_matched_control_takes_as_many_steps_as_spt(tmp_path):
    # pretraining by epochs (1 epoch of the 300 labelled inputs at batch 32 = 10 steps), fine-tuning by steps
    shared = ["task.train_fraction=0.5", "pretrain.epochs=1", "pretrain.batch_size=32", "finetune.max_steps=3",
              "finetune.eval_every=3"]
    spt = experiment.run(make_cfg(tiny("spt", *shared), tmp_path), tmp_path / "spt")
    matched = experiment.run(make_cfg(tiny("supervised_matched", *shared), tmp_path), tmp_path / "matched")
    assert spt["steps"] == {"pretrain": math.ceil(300 / 32), "finetune": 3}
    assert matched["steps"] == {"finetune": spt["steps"]["pretrain"] + spt["steps"]["finetune"]}
    assert matched["matched"] == {"pretrain": 10, "finetune": 3, "total": 13}
    assert "pretrain" not in matched  # it pretrains nothing: it only counts


def test_compute_matched_control_counts_spt_pretraining_without_running_it(tmp_path):
    """The fast tier's run of recipe=supervised_matched (the test above also runs spt, to compare):
    pretraining by epochs is counted on the pretraining inputs, 600 at batch 100 = 6 steps."""
    shared = ["pretrain.epochs=1", "pretrain.batch_size=100", "finetune.max_steps=3", "finetune.eval_every=3"]
    matched = experiment.run(make_cfg(tiny("supervised_matched", *shared), tmp_path), tmp_path / "matched")
    assert matched["status"] == "ok"
    assert matched["matched"] == {"pretrain": 6, "finetune": 3, "total": 9}
    assert matched["steps"] == {"finetune": 9} and "pretrain" not in matched


@pytest.mark.parametrize("override", ["task.train_fraction=0", "task.train_fraction=1.5", "pretrain.inputs=some",
                                      "finetune.bucket_pool=-1"])
def test_bad_study_options_are_config_errors(tmp_path, override):
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[-1]):
        experiment.run(make_cfg(tiny("spt", *QUICK, override), tmp_path), tmp_path / "run")


def test_length_buckets_pad_less_and_stay_a_seeded_permutation():
    lengths = np.random.default_rng(1).integers(20, 150, 1000)
    plain = epoch_order(1000, 5, 2)
    assert np.array_equal(plain, np.random.default_rng([5, 2]).permutation(1000))  # pool 0: the old order
    bucketed = epoch_order(1000, 5, 2, 32, lengths, pool=10)
    assert sorted(bucketed) == list(range(1000))
    assert np.array_equal(bucketed, epoch_order(1000, 5, 2, 32, lengths, pool=10))  # resume, every DDP rank
    assert not np.array_equal(bucketed, epoch_order(1000, 5, 3, 32, lengths, pool=10))

    def padding(order):
        real, padded = pad_share(lengths, [order[i : i + 32] for i in range(0, 1000, 32)])
        return padded / (real + padded)

    assert padding(plain) > 0.3 and padding(bucketed) < 0.1
    # whole batches are shuffled: batch k is not pool-sorted against batch k + 1 everywhere
    firsts = [lengths[bucketed[i : i + 32]].min() for i in range(0, 31 * 32, 32)]
    assert firsts != sorted(firsts)


@pytest.mark.parametrize("arch", ["transformer", "s4d", "cnn"])
def test_study_preset_composes_each_backbone_with_its_own_settings(tmp_path, arch):
    per = {r: make_cfg(["experiment=study_cpu", f"arch={arch}", f"recipe={r}"], tmp_path)
           for r in ("supervised", "spt", "supervised_matched")}
    lrs = {r: c.finetune.lr for r, c in per.items()}
    chosen = OmegaConf.to_container(per["spt"].lr_by_recipe, resolve=True)
    assert lrs == chosen and lrs["supervised_matched"] == lrs["supervised"]
    assert all(c.pretrain.lr == lrs["supervised"] for c in per.values())
    cfg = per["spt"]
    if arch == "transformer":
        assert cfg.arch.pos == "learned" and cfg.model.pooling == "mean"
    axes = OmegaConf.load(ROOT / "conf" / "experiment" / "study_cpu.yaml").hydra.sweeper.params
    assert set(axes) == {"arch", "recipe", "task.train_fraction", "seed"}  # the design in its header
    assert len(axes["task.train_fraction"].split(",")) >= 3 and len(axes.seed.split(",")) >= 3
    assert set(axes.recipe.split(",")) == {"supervised", "spt", "supervised_matched"}
    config_schema.check(cfg, ("pretrain", "finetune"))
    assert cfg.finetune.max_steps == cfg.pretrain.max_steps and cfg.pretrain.inputs == "labelled"


@pytest.mark.parametrize("task", ["digits", "listops"])
def test_converged_study_preset_composes_its_design(tmp_path, task):
    """experiment=study_cpu_converged: every backbone, every stage early-stopped, the search key declared
    and swept for all backbones alike, and each task's own settings (conf/per_task/) applied."""
    preset = OmegaConf.load(ROOT / "conf" / "experiment" / "study_cpu_converged.yaml")
    axes = preset.hydra.sweeper.params
    assert set(axes.arch.split(",")) == {"transformer", "s4d", "cnn", "s4", "mamba"}
    assert set(axes.recipe.split(",")) == {"supervised", "spt", "supervised_matched"}
    assert len(axes.seed.split(",")) >= 3 and {"0.1", "1.0"} <= set(axes["task.train_fraction"].split(","))
    assert list(preset.search) == ["finetune.lr"] and len(axes["finetune.lr"].split(",")) >= 2
    lrs = [float(v) for v in axes["finetune.lr"].split(",")]
    assert min(lrs) < preset.pretrain.lr  # a fine-tuning lr below the pretraining lr is in the grid
    for arch in ("transformer", "mamba"):
        cfg = make_cfg(["experiment=study_cpu_converged", f"task={task}", f"arch={arch}", "recipe=spt"], tmp_path)
        config_schema.check(cfg, ("pretrain", "finetune"))
        assert cfg.finetune.patience and cfg.pretrain.patience and cfg.arch.dropout == 0.1
        assert cfg.pretrain.inputs == "labelled" and list(cfg.search) == ["finetune.lr"]
        per_task = OmegaConf.load(ROOT / "conf" / "per_task" / "study_cpu_converged" / f"{task}.yaml")
        assert cfg.finetune.eval_every == per_task.finetune.eval_every
        assert cfg.pretrain.max_steps == per_task.pretrain.max_steps
        if task == "listops":
            assert cfg.task.n_train == 5000 and cfg.finetune.bucket_pool == 50
    # search is recorded in the config but is no part of what a run computes
    plain = experiment.resolve(cfg)
    assert "search" not in experiment.hashed_config(plain, ("pretrain", "finetune"))
