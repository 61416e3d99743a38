"""The throughput benchmark's CPU path and its GPU options, without a GPU: one measurement in this
process, the rows it plans, the data-sheet peaks, and the one-line error for --device cuda."""

from __future__ import annotations

import pytest
import torch

from bench import throughput


def test_one_measurement_under_bf16_autocast():
    args = {"device": "cpu", "d_model": 16, "n_layers": 1, "tokens": 64, "steps": 1, "warmup": 0, "dtype": "bf16",
            "set": ["impl=torch"]}
    row = throughput._measure("mamba", 32, args)
    assert row["batch"] == 2 and row["impl"] == "torch"
    assert row["tokens_per_s"] > 0 and row["peak_mem_mb"] >= 0 and row["counted_flops_per_s"] > 0


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
