"""The throughput benchmark's CPU path and its GPU options, without a GPU: one measurement in this
process, the rows it plans, the data-sheet peaks, the one-line error for --device cuda, and the FLOP
counts (bench/flops.py) against their closed forms."""

from __future__ import annotations

import pytest
import torch

from archs import mamba_cpu
from archs.mamba import Mamba
from archs.transformer import Transformer
from bench import flops, throughput


def test_one_measurement_under_bf16_autocast():
    args = {"device": "cpu", "d_model": 16, "n_layers": 1, "tokens": 64, "steps": 1, "warmup": 0, "dtype": "bf16",
            "set": ["impl=torch"]}
    row = throughput.time_steps("mamba", 32, args)
    assert row["batch"] == 2 and row["impl"] == "torch"
    assert row["tokens_per_s"] > 0 and row["peak_mem_mb"] >= 0 and row["flops_per_s"] > 0
    assert row["flops_per_s"] == pytest.approx(row["flops_per_token"] * row["tokens_per_s"])


def test_mamba_implementations_are_measured_side_by_side():
    todo = throughput.entries(["cnn", "mamba"], ["cuda", "torch"], ["dropout=0"])
    assert todo == [("cnn", "cnn", ["dropout=0"]), ("mamba:cuda", "mamba", ["dropout=0", "impl=cuda"]),
                    ("mamba:torch", "mamba", ["dropout=0", "impl=torch"])]


def test_peak_flops_come_from_the_data_sheet_by_device_name():
    assert throughput.peak_flops_of("NVIDIA H100 80GB HBM3") == 989e12
    assert throughput.peak_flops_of("NVIDIA H100 PCIe") == 756e12
    assert throughput.peak_flops_of("NVIDIA A100-SXM4-80GB") == 312e12
    assert throughput.peak_flops_of("NVIDIA GeForce GTX 1080") is None  # then measured instead


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_device_cuda_without_cuda_is_one_line(capsys):
    assert throughput.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --device cuda but CUDA is not available here; use --device cpu (or auto)"]


def step_flops(model, x, mask, backward=True) -> int:
    with flops.counter() as counter:
        y = model(x, mask)
        if backward:
            y.pow(2).mean().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("backward", [False, True])
def test_transformer_flops_on_cpu_match_the_closed_form(backward):
    b, length, d, heads, d_ff, layers = 2, 12, 16, 2, 24, 2
    model = Transformer(d, layers, 0.0, max_len=length, n_heads=heads, d_ff=d_ff, pos="sinusoidal")
    x, mask = torch.randn(b, length, d), torch.ones(b, length, dtype=torch.bool)
    linear = b * length * (2 * d * 3 * d + 2 * d * d + 2 * 2 * d * d_ff)  # qkv, out, the two FFN layers
    attention = 2 * 2 * b * length * length * d  # Q K^T and P V, over all heads
    # Backward: twice the forward for every linear layer (input and weight gradients); 5 attention
    # matmuls of the forward's size each (scores recomputed, dV, dP, dQ, dK).
    expected = layers * (3 * linear + attention * 7 // 2 if backward else linear + attention)
    assert step_flops(model, x, mask, backward) == expected


def test_fft_flops_are_counted():
    x = torch.randn(3, 8)
    with flops.counter() as counter:
        torch.fft.irfft(torch.fft.rfft(x, n=16), n=16)
    assert counter.get_total_flops() == 2 * 3 * 2.5 * 16 * 4  # two real FFTs of 16 points, 3 rows


@pytest.mark.skipif(mamba_cpu.unavailable_reason() is not None, reason="needs the C++ scan")
@pytest.mark.parametrize("bidirectional", [False, True])
def test_mamba_flops_are_the_same_for_every_impl(bidirectional):
    """The C++ kernel forms dt_proj itself, where the PyTorch path's matmul is counted: the closed forms
    must make up the difference exactly, so both impls report the same model FLOPs."""
    b, length = 2, 10
    x, mask = torch.randn(b, length, 16), torch.ones(b, length, dtype=torch.bool)
    counts = []
    for impl in ("cpp", "torch"):
        torch.manual_seed(0)
        model = Mamba(16, 2, max_len=length, d_state=4, bidirectional=bidirectional, impl=impl)
        counts.append(step_flops(model, x, mask) + flops.uncounted_flops(model, b, length))
    assert counts[0] == counts[1]
    e, n, k = 32, 4, 4
    scan = b * length * (7 * e * n + 2 * k * e)
    assert flops.uncounted_flops(model, b, length) == 3 * scan * 2 * (2 if bidirectional else 1)


@pytest.mark.slow
def test_reference_side_by_side_skips_a_missing_file_in_one_line(capsys):
    from bench import reference

    tiny = ["--lengths", "16", "--tokens", "32", "--d-model", "16", "--n-layers", "1", "--repeats", "1",
            "--steps", "1", "--warmup", "0"]
    assert reference.main(["--archs", "transformer", "s4d", "--s4d", "/nonexistent/s4d.py", *tiny]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "skip s4d: no reference file (/nonexistent/s4d.py)"
    assert out[-1].startswith("transformer  L=    16  ours") and "ratio" in out[-1]


def test_a_reference_file_loads_with_its_sibling_imports(tmp_path):
    """mamba.py imports `from mambapy.pscan import pscan`: the folder's parent goes on the path."""
    from bench import reference

    (tmp_path / "pkgx").mkdir()
    (tmp_path / "pkgx" / "helper.py").write_text("VALUE = 3\n")
    (tmp_path / "pkgx" / "model.py").write_text("from pkgx.helper import VALUE\n")
    assert reference.load_file(tmp_path / "pkgx" / "model.py").VALUE == 3
