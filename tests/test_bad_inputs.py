"""A catalogue of bad inputs: unknown names, wrong types and ranges of every numeric option,
inconsistent combinations, malformed data files of every task format, empty datasets, unwritable
folders. Each is refused before any training with ONE line that names the option or file and the
fix — a USER_ERRORS exception, which run.py prints as `error: ...` with exit status 2
(tests/test_cli.py checks that mapping) — and no result.json is written.

In-process on purpose: the same validation code as the command line, at a fraction of the cost of
one subprocess per case."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from recipes import experiment
from recipes.errors import USER_ERRORS
from run import check_group_choices, check_output_folder
from tasks.listops import ListOps
from tests.conftest import cli, make_cfg
from tests.fixtures.lra import write_aan, write_cifar, write_imdb, write_pathfinder

BASE = ["recipe=spt", "task.n_train=40", "task.n_val=10", "task.n_test=10", "arch.d_model=16",
        "arch.n_layers=1", "progress=false", "finetune.max_steps=2", "pretrain.max_steps=2"]
SHORT_LISTOPS = ["task.min_length=4", "task.max_length=24"]  # the default task, kept small


class DualListOps(ListOps):
    """A plugin task that claims two documents per example but builds one (for the catalogue)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.spec = dataclasses.replace(self.spec, dual=True)


# Data writers: write(tmp_path) -> the task.data_dir to use, after damaging one file.
def listops_files(content: dict):
    def write(tmp):
        root = tmp / "listops"
        root.mkdir()
        for split in ("train", "val", "test"):
            text = content.get(split, "Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t9\n")
            (root / f"basic_{split}.tsv").write_text(text)
        return root
    return write


def damaged(make_root):
    """-> damage -> write(tmp): official-format files from make_root(tmp), then damage(root) on them."""
    def with_damage(damage):
        def write(tmp):
            root = make_root(tmp)
            damage(root)
            return root
        return write
    return with_damage


imdb = damaged(lambda tmp: write_imdb(tmp, n_per_class=2))
aan = damaged(lambda tmp: write_aan(tmp, n=4))
cifar = damaged(lambda tmp: write_cifar(tmp, n_per_batch=4)[0])


def pathfinder(damage):
    def write(tmp):
        root, _ = write_pathfinder(tmp, resolution=32, n=6)
        damage(root / "pathfinder32" / "curv_contour_length_14")
        return root
    return write


def replace_line(path, line: str) -> None:
    path.write_text(path.read_text().splitlines()[0] + "\n" + line + "\n")


def pickle_to(path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


PIXEL_TASK = ["arch.n_heads=2", "task.n_train=null", "task.n_val=null", "task.n_test=null"]

# (id, overrides, what the one line must say, data writer or None); `{data}` is the writer's folder.
CASES = [
    # unknown group names
    ("arch-name", ["arch=mamba9"], "unknown arch 'mamba9': choose one of cnn, mamba", None),
    ("task-name", ["task=lisstops"], "unknown task 'lisstops': choose one of", None),
    ("recipe-name", ["recipe=semi"], "unknown recipe 'semi': choose one of spt, supervised", None),
    ("recipe-name-in-list", ["recipe=spt,semi"], "unknown recipe 'semi'", None),  # each choice of a sweep
    ("experiment-name", ["experiment=lra_nope"], "unknown experiment 'lra_nope'", None),
    # top-level options
    ("seed-type", ["seed=abc"], "seed='abc' must be a non-negative integer", None),
    ("seed-range", ["seed=-1"], "seed=-1 must be a non-negative integer", None),
    ("seed-bool", ["seed=true"], "seed=True must be a non-negative integer", None),  # bool is an int in Python
    ("device", ["device=tpu"], "device='tpu' is not one of auto, cpu, cuda", None),
    ("pooling", ["model.pooling=max"], "model.pooling='max' is not one of auto, mean, cls, last", None),
    # every numeric option of the training stages, wrong type and out of range
    ("epochs-range", ["finetune.epochs=0"], "finetune.epochs=0 must be a positive integer", None),
    ("epochs-type", ["finetune.epochs=ten"], "finetune.epochs='ten' must be a positive integer", None),
    ("max_steps-range", ["finetune.max_steps=0"], "finetune.max_steps=0 must be a positive integer or null", None),
    ("max_steps-type", ["finetune.max_steps=1.5"], "finetune.max_steps=1.5 must be a positive integer", None),
    ("batch_size-range", ["finetune.batch_size=0"], "finetune.batch_size=0 must be a positive integer", None),
    ("batch_size-type", ["pretrain.batch_size=1.5"], "pretrain.batch_size=1.5 must be a positive integer", None),
    ("eval_batch_size", ["finetune.eval_batch_size=-4"], "finetune.eval_batch_size=-4 must be a positive", None),
    ("lr-range", ["finetune.lr=0"], "finetune.lr=0 must be a number > 0", None),
    ("lr-negative", ["pretrain.lr=-0.001"], "pretrain.lr=-0.001 must be a number > 0", None),
    ("lr-type", ["finetune.lr=fast"], "finetune.lr='fast' must be a number", None),
    ("betas-length", ["finetune.betas=[0.9]"], "finetune.betas=[0.9] must be two numbers in [0, 1)", None),
    ("betas-range", ["finetune.betas=[0.9,1.5]"], "finetune.betas=[0.9, 1.5] must be two numbers in [0, 1)", None),
    ("weight_decay-range", ["finetune.weight_decay=-0.1"], "finetune.weight_decay=-0.1 must be a number >= 0", None),
    ("weight_decay-type", ["finetune.weight_decay=lots"], "finetune.weight_decay='lots' must be a number", None),
    ("warmup-range", ["finetune.warmup_steps=-1"], "finetune.warmup_steps=-1 must be a whole number of steps >= 0",
     None),
    ("warmup-type", ["finetune.warmup_steps=2.5"], "finetune.warmup_steps=2.5 must be a whole number", None),
    ("min_lr_ratio-range", ["finetune.min_lr_ratio=1.5"], "finetune.min_lr_ratio=1.5 must be a number in [0, 1]", None),
    ("min_lr_ratio-type", ["pretrain.min_lr_ratio=low"], "pretrain.min_lr_ratio='low' must be a number", None),
    ("grad_clip-range", ["finetune.grad_clip=-1"], "finetune.grad_clip=-1 must be a number >= 0", None),
    ("grad_clip-type", ["finetune.grad_clip=off"], "finetune.grad_clip='off' must be a number", None),
    ("eval_every-range", ["finetune.eval_every=0"], "finetune.eval_every=0 must be a positive integer or null", None),
    ("eval_every-type", ["pretrain.eval_every=often"], "pretrain.eval_every='often' must be a positive", None),
    ("ckpt_every-range", ["finetune.ckpt_every=-2"], "finetune.ckpt_every=-2 must be a positive integer", None),
    ("ckpt_every-type", ["pretrain.ckpt_every=1.5"], "pretrain.ckpt_every=1.5 must be a positive integer", None),
    ("on_nan", ["finetune.on_nan=ignore"], "finetune.on_nan='ignore' must be one of stop, skip_batch", None),
    ("on_nan-type", ["pretrain.on_nan=[stop]"], "pretrain.on_nan=['stop'] must be one of stop, skip_batch", None),
    ("mask_ratio-zero", ["pretrain.mask_ratio=0"], "pretrain.mask_ratio=0 must be a number in (0, 1)", None),
    ("mask_ratio-range", ["pretrain.mask_ratio=1.5"], "pretrain.mask_ratio=1.5 must be a number in (0, 1)", None),
    ("mask_ratio-type", ["pretrain.mask_ratio=abc"], "pretrain.mask_ratio='abc' must be a number in (0, 1)", None),
    ("pretrain-seed-range", ["pretrain.seed=-2"], "pretrain.seed=-2 must be a non-negative integer", None),
    ("pretrain-seed-type", ["pretrain.seed=x"], "pretrain.seed='x' must be a non-negative integer", None),
    ("objective", ["pretrain.objective=bert"], "pretrain.objective='bert' is not one of auto, mlm, ntp", None),
    ("pixel_loss", ["pretrain.pixel_loss=mse"], "pretrain.pixel_loss='mse' must be ce, l1, or null", None),
    # backbone options
    ("d_model-range", ["arch.d_model=-8"], "d_model=-8 must be a positive integer", None),
    ("d_model-type", ["arch.d_model=wide"], "d_model='wide' must be a positive integer", None),
    ("n_layers", ["arch.n_layers=0"], "n_layers=0 must be a positive integer", None),
    ("n_heads", ["arch.n_heads=3"], "d_model=16 is not divisible by n_heads=3", None),
    ("dropout-range", ["arch.dropout=1.5"], "dropout=1.5 must be a number in [0, 1)", None),
    ("dropout-negative", ["arch.dropout=-0.1"], "dropout=-0.1 must be a number in [0, 1)", None),
    ("d_ff", ["arch.d_ff=-1"], "d_ff=-1 must be a positive integer", None),
    ("pos", ["arch.pos=alibi"], "pos='alibi' is not one of learned, sinusoidal, rotary", None),
    ("causal-type", ["arch.causal=maybe"], "arch.causal='maybe' must be true or false", None),
    ("s4d-d_state", ["arch=s4d", "arch.d_state=7"], "d_state=7 must be even", None),
    ("s4d-init", ["arch=s4d", "arch.init=random"], "init='random' is not one of", None),
    ("s4d-dt", ["arch=s4d", "arch.dt_min=0.5"], "need 0 < dt_min <= dt_max, got dt_min=0.5, dt_max=0.1", None),
    ("s4-bidirectional-type", ["arch=s4", "arch.bidirectional=sometimes"],
     "arch.bidirectional='sometimes' must be true or false", None),
    ("mamba-impl", ["arch=mamba", "arch.impl=triton"], "impl='triton' is not one of", None),
    ("cnn-kernel", ["arch=cnn", "arch.kernel_size=4"], "kernel_size=4 must be odd", None),
    # task options
    ("n_train-range", ["task.n_train=0"], "task.n_train=0 must be a positive integer", None),
    ("n_val-type", ["task.n_val=many"], "task.n_val='many' must be a positive integer", None),
    ("n_test-range", ["task.n_test=-1"], "task.n_test=-1 must be a positive integer", None),
    ("lengths", ["task.min_length=30"], "task.min_length=30 must be >= 0 and < max_length - 1", None),
    ("max_length", ["task.max_length=0"], "task.max_len=0 must be a positive integer", None),
    ("max_depth", ["task.max_depth=0"], "task.max_depth=0 must be a positive integer", None),
    ("task-mask_ratio", ["task.mask_ratio=0", "pretrain.mask_ratio=null"], "task.mask_ratio=0 must be in (0, 1)", None),
    ("data_dir-missing", ["task.data_dir=/nonexistent/listops"],
     "task.data_dir=/nonexistent/listops is not a directory", None),
    # an LRA task without its data: the line says where to download it
    ("text-no-data", ["task=text"], "task=text needs IMDB: set task.data_dir=/path/to/aclImdb (the IMDB release "
     "(https://", None),
    ("retrieval-no-data", ["task=retrieval"], "task=retrieval needs the AAN pairs: set task.data_dir=/path/to/tsv_data",
     None),
    ("image-no-data", ["task=image", *PIXEL_TASK], "task=image needs CIFAR-10: set "
     "task.data_dir=/path/to/cifar-10-batches-py (the CIFAR-10 python version (https://", None),
    # inconsistent combinations
    ("ntp-bidirectional", ["pretrain.objective=ntp"], "pretrain.objective=ntp needs a causal backbone", None),
    ("ntp-bidirectional-s4d", ["arch=s4d", "pretrain.objective=ntp"],
     "pretrain.objective=ntp needs a causal backbone", None),
    ("mlm-causal", ["arch.causal=true", "pretrain.objective=mlm"],
     "pretrain.objective=mlm with a causal backbone", None),
    ("cls-causal", ["arch.causal=true", "model.pooling=cls"], "model.pooling=cls with a causal backbone", None),
    ("pixel_loss-tokens", ["pretrain.pixel_loss=l1"], "pretrain.pixel_loss='l1' applies to pixel tasks only", None),
    ("dual-head-single-input", ["task._target_=tests.test_bad_inputs.DualListOps"],
     "task 'listops' declares dual=True but its data has one document per example", None),
    # unwritable folders
    ("cache_dir-unwritable", ["cache_dir={data}/file/c"], "cannot write to", "file"),
    ("out_root-unwritable", ["out_root={data}/file/runs"], "out_root=", "file"),
    # malformed data files, every format; empty datasets
    ("listops-token", ["task.data_dir={data}"], "basic_val.tsv:2: unknown ListOps token 'oops'",
     listops_files({"val": "Source\tTarget\n( [MAX 2 ) oops ]\t1\n"})),
    ("listops-header", ["task.data_dir={data}"], "basic_train.tsv:1: expected the header",
     listops_files({"train": "src\tlabel\n[MAX 1 2 ]\t2\n"})),
    ("listops-columns", ["task.data_dir={data}"], "basic_test.tsv:2: expected 2 tab-separated",
     listops_files({"test": "Source\tTarget\n( [MAX 1 ) 2 ]\n"})),
    ("listops-empty", ["task.data_dir={data}"],
     "basic_val.tsv: no examples", listops_files({"val": "Source\tTarget\n"})),
    ("listops-zero-bytes", ["task.data_dir={data}"],
     "basic_train.tsv:1: expected the header", listops_files({"train": ""})),
    ("text-missing-folder", ["task=text", "task.data_dir={data}"], "test/neg not found",
     imdb(lambda r: [f.unlink() for f in (r / "test" / "neg").iterdir()] and (r / "test" / "neg").rmdir())),
    ("text-empty", ["task=text", "task.data_dir={data}"], "train/pos: no *.txt reviews",
     imdb(lambda r: [f.unlink() for f in (r / "train" / "pos").iterdir()])),
    ("retrieval-columns", ["task=retrieval", "task.data_dir={data}"],
     "new_aan_pairs.eval.tsv:2: expected 5 tab-separated",
     aan(lambda r: replace_line(r / "new_aan_pairs.eval.tsv", "1.0\tA\tB\tonly four"))),
    ("retrieval-label", ["task=retrieval", "task.data_dir={data}"],
     "new_aan_pairs.eval.tsv:2: label b'yes' is not 0 or 1",
     aan(lambda r: replace_line(r / "new_aan_pairs.eval.tsv", "yes\tA\tB\tx\ty"))),
    ("retrieval-missing", ["task=retrieval", "task.data_dir={data}"], "new_aan_pairs.test.tsv not found",
     aan(lambda r: (r / "new_aan_pairs.test.tsv").unlink())),
    ("retrieval-empty", ["task=retrieval", "task.data_dir={data}"], "new_aan_pairs.train.tsv: no document pairs",
     aan(lambda r: (r / "new_aan_pairs.train.tsv").write_text(""))),
    ("image-not-pickle", ["task=image", "task.data_dir={data}", *PIXEL_TASK],
     "data_batch_3: not a CIFAR-10 python batch",
     cifar(lambda r: (r / "data_batch_3").write_bytes(b"\x00garbage"))),
    ("image-shape", ["task=image", "task.data_dir={data}", *PIXEL_TASK],
     "data_batch_2: expected b'data' of shape (N, 3072)",
     cifar(lambda r: pickle_to(r / "data_batch_2", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))),
    ("image-labels", ["task=image", "task.data_dir={data}", *PIXEL_TASK], "test_batch: labels must be 0-9",
     cifar(lambda r: pickle_to(r / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}))),
    ("image-missing", ["task=image", "task.data_dir={data}", *PIXEL_TASK], "data_batch_5 not found",
     cifar(lambda r: (r / "data_batch_5").unlink())),
    ("pathfinder-metadata", ["task=pathfinder", "task.data_dir={data}", *PIXEL_TASK],
     "metadata/0.npy:2: expected 'imgs/<k> sample_<n>.png",
     pathfinder(lambda d: replace_line(d / "metadata" / "0.npy", "imgs/0 sample_2.png 2"))),
    ("pathfinder-no-metadata", ["task=pathfinder", "task.data_dir={data}", *PIXEL_TASK], "no *.npy metadata files",
     pathfinder(lambda d: [f.unlink() for f in (d / "metadata").glob("*.npy")])),
    # an unreadable image is skipped (the release has a few), which here leaves too few to split
    ("pathfinder-too-few", ["task=pathfinder", "task.data_dir={data}", *PIXEL_TASK],
     "5 readable images are too few for an 80/10/10 split",
     pathfinder(lambda d: (d / "imgs" / "0" / "sample_2.png").write_bytes(b"not a png"))),
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # prepared data shared by the cases that get that far


@pytest.mark.parametrize("args, expected, data", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line_with_no_result(tmp_path, cache, args, expected, data):
    if data == "file":
        (tmp_path / "file").write_text("a file where a folder should be")
        folder = tmp_path
    else:
        folder = data(tmp_path) if data else None
    args = [a.replace("{data}", str(folder)) for a in args]
    message = check_group_choices(args) or check_output_folder(args)  # what run.py asks before Hydra
    if message is None:
        listops = [] if any(a.startswith("task=") for a in args) else SHORT_LISTOPS
        cfg = make_cfg([*BASE, *listops, f"cache_dir={cache}", *args], tmp_path)
        with pytest.raises(USER_ERRORS) as info:
            experiment.run(cfg, tmp_path / "run")
        message = str(info.value)
    assert expected in message and "\n" not in message, message
    assert not list(tmp_path.rglob("result.json"))


def test_catalogue_size():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.slow
def test_unwritable_output_folder_on_the_command_line(tmp_path):
    (tmp_path / "file").write_text("")
    proc = cli(["out_root=file/runs", "progress=false"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: out_root=file/runs cannot be written (Not a directory): point it at a " \
                                  "writable folder"
