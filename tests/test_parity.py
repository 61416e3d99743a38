"""Each fast path against a slow, obviously-correct reference: SSM convolution kernels against the
unrolled recurrence of the discretized system, the FFT convolution against a direct sum, Mamba's
PyTorch and compiled CPU scans against a step-by-step loop, and (on a GPU with mamba-ssm) the fused
kernels against the PyTorch path with the same weights."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from archs import cpu_kernels, mamba_cpu
from archs.mamba import Mamba, MambaMixer, fused_scan_available, selective_scan_torch
from archs.s4 import S4, S4Kernel
from archs.s4d import S4DKernel
from archs.ssm import fft_conv
from recipes.errors import ConfigError
from recipes.model import build_backbone

c128 = torch.complex128


def full(v):
    """The N/2 stored conjugate-pair entries -> all N."""
    return torch.cat([v, v.conj()], dim=-1)


needs_cpp = pytest.mark.skipif(bool(mamba_cpu.unavailable_reason()), reason="no C++ compiler for the CPU kernels")


@pytest.mark.parametrize("impl", ["torch", pytest.param("cpp", marks=needs_cpp)])
@pytest.mark.parametrize("channels, m", [(1, 50), (2, 50), (2, 51)])
def test_s4_kernel_equals_unrolled_recurrence(channels, m, impl):
    """K_l = C Ā^l B̄ with the dense bilinear discretization of A = Λ - P P^*, and C recovered from
    the learned C̃ = C (I - Ā^M). M = max_len, even (ω = -1 is a frequency) or odd; the kernel is
    cut to shorter lengths. Both ways of computing the Cauchy sums."""
    torch.manual_seed(0)
    h, n = 3, 8
    kern = S4Kernel(h, channels, n, m, 0.01, 0.2, None, impl).double()
    with torch.no_grad():  # move P away from its init so the low-rank term is exercised with other values
        kern.P.add_(0.3 * torch.randn_like(kern.P))
    k = kern(m)  # (c, H, M)
    assert torch.equal(kern(20), k[..., :20])
    lam, dt = kern.lam(), kern.log_dt.exp()
    p, b, c = (torch.view_as_complex(t) for t in (kern.P, kern.B, kern.C))
    eye = torch.eye(n, dtype=c128)
    for ch in range(h):
        a = torch.diag(full(lam[ch])) - full(p[ch])[:, None] * full(p[ch]).conj()[None, :]
        inv = torch.linalg.inv(eye - dt[ch] / 2 * a)
        a_bar, b_bar = inv @ (eye + dt[ch] / 2 * a), inv @ (dt[ch] * full(b[ch]))
        for d in range(channels):
            c_true = full(c[d, ch]) @ torch.linalg.inv(eye - torch.linalg.matrix_power(a_bar, m))
            x, taps = b_bar, []
            for _ in range(m):
                taps.append((c_true @ x).real)
                x = a_bar @ x
            torch.testing.assert_close(k[d, ch], torch.stack(taps), atol=1e-12, rtol=1e-9)
    assert kern.used == {impl}


@needs_cpp
def test_s4_cpp_cauchy_gradients_are_exact():
    from archs.s4 import CppCauchy

    torch.manual_seed(0)
    v = torch.randn(3, 4, 5, dtype=torch.complex128, requires_grad=True)
    lam = torch.complex(-torch.rand(4, 5, dtype=torch.float64) - 0.1, torch.randn(4, 5, dtype=torch.float64))
    lam.requires_grad_()
    for m in (12, 13):  # with and without the frequency ω = -1
        assert torch.autograd.gradcheck(lambda v, lam, m=m: CppCauchy.apply(v, lam, m), (v, lam))


@pytest.mark.parametrize("init", ["lin", "inv", "legs"])
def test_s4d_kernel_equals_unrolled_recurrence(init):
    torch.manual_seed(0)
    h, n, length = 3, 8, 30
    kern = S4DKernel(h, 1, n, init, 0.01, 0.2, None).double()
    k = kern(length)[0]
    a = torch.complex(-kern.log_A_real.exp(), kern.A_imag)
    dt, c = kern.log_dt.exp(), torch.view_as_complex(kern.C)[0]
    for ch in range(h):
        a_bar = torch.exp(dt[ch] * a[ch])
        x, taps = (a_bar - 1) / a[ch], []  # B̄ with B = 1 (folded into C); ZOH
        for _ in range(length):
            taps.append(2 * (c[ch] * x).sum().real)
            x = a_bar * x
        torch.testing.assert_close(k[ch], torch.stack(taps), atol=1e-12, rtol=1e-9)


def test_fft_conv_equals_direct_sum_both_directions():
    torch.manual_seed(0)
    u, k = torch.randn(2, 3, 17, dtype=torch.float64), torch.randn(2, 3, 17, dtype=torch.float64)
    direct = torch.zeros_like(u)
    for t in range(17):
        for j in range(t + 1):
            direct[..., t] += k[0, :, j] * u[..., t - j]
    torch.testing.assert_close(fft_conv(u, k[:1]), direct)
    for t in range(17):
        for d in range(1, 17 - t):
            direct[..., t] += k[1, :, d - 1] * u[..., t + d]
    torch.testing.assert_close(fft_conv(u, k), direct)


def reference_scan(u, delta, a, b, c):
    """The recurrence, one step at a time, with autograd through every step."""
    h = torch.zeros(u.shape[0], u.shape[2], a.shape[1], dtype=u.dtype)
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(delta[:, t, :, None] * a) * h + (delta[:, t] * u[:, t])[..., None] * b[:, t, None, :]
        ys.append((h * c[:, t, None, :]).sum(-1))
    return torch.stack(ys, 1)




@pytest.mark.parametrize("chunk", [1, 6, 64])
def test_mamba_scan_matches_sequential_reference_forward_and_gradients(chunk):
    torch.manual_seed(0)
    bsz, length, e, n = 2, 23, 5, 4
    u, b, c = (torch.randn(bsz, length, k, dtype=torch.float64, requires_grad=True) for k in (e, n, n))
    delta = torch.nn.functional.softplus(torch.randn(bsz, length, e, dtype=torch.float64)).requires_grad_()
    a = (-torch.rand(e, n, dtype=torch.float64) * 3).requires_grad_()
    inputs = [u, delta, a, b, c]
    y = selective_scan_torch(*inputs, chunk=chunk)
    y_ref = reference_scan(*inputs)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-10)
    weight = torch.randn_like(y)
    grads = torch.autograd.grad((y * weight).sum(), inputs)
    grads_ref = torch.autograd.grad((y_ref * weight).sum(), inputs)
    for name, g, g_ref in zip("u delta A B C".split(), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-11, rtol=1e-9, msg=f"gradient of {name}")


@needs_cpp
@pytest.mark.parametrize("n, r, dtype", [(4, 3, torch.float64), (19, 11, torch.float64), (16, 8, torch.float32)])
def test_mamba_cpp_scan_matches_sequential_reference_forward_and_gradients(n, r, dtype):
    """The compiled scan with softplus, D and the silu(z) gate, as mamba-ssm's selective_scan_fn.
    Odd sizes: e = 21 is two whole blocks of 8 channels and a partial one; l = 150 spans two whole
    64-step chunks and a partial one; n = 19 (and dt rank r = 11) is two groups (one) of 8 summed over
    channels together and 3 summed one by one; z is a strided view, as in the model. In float32 the
    kernel's own exp runs, and A reaches -300 so that exp(Δ A) underflows; the reference stays in
    float64."""
    torch.manual_seed(0)
    bsz, length, e = 2, 150, 21
    x, dt_low, b, c = (torch.randn(bsz, length, k, dtype=dtype, requires_grad=True) for k in (e, r, n, n))
    dt_weight = torch.randn(e, r, dtype=dtype, requires_grad=True)
    xz = torch.randn(bsz, length, 2 * e, dtype=dtype, requires_grad=True)
    z = xz[..., e:]
    a = (-torch.rand(e, n, dtype=dtype) * (3 if dtype == torch.float64 else 300)).requires_grad_()
    d, dt_bias = (torch.randn(e, dtype=dtype, requires_grad=True) for _ in range(2))
    inputs = [x, dt_low, dt_weight, a, b, c, d, xz, dt_bias]
    out = mamba_cpu.selective_scan_cpp(x, dt_low, dt_weight, a, b, c, d, z, dt_bias)
    x64, dt_low64, dt_weight64, a64, b64, c64, d64, xz64, dt_bias64 = inputs64 = [
        t.detach().double().requires_grad_() for t in inputs]
    z64 = xz64[..., e:]
    delta = torch.nn.functional.softplus(dt_low64 @ dt_weight64.T + dt_bias64)
    ref = (reference_scan(x64, delta, a64, b64, c64) + d64 * x64) * torch.nn.functional.silu(z64)
    tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.double(), ref, **tol)
    weight = torch.randn_like(ref)
    grads = torch.autograd.grad((out * weight.to(dtype)).sum(), inputs)
    grads_ref = torch.autograd.grad((ref * weight).sum(), inputs64)
    tol = dict(atol=1e-10, rtol=1e-9) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    for name, g, g_ref in zip("x dt_low dt_weight A B C D xz dt_bias".split(), grads, grads_ref):
        torch.testing.assert_close(g.double(), g_ref, **tol, msg=f"gradient of {name}")


# gradcheck's numerical Jacobian grows with length * e: (6, 70) in PyTorch measured >= 1 s (the slow tier).
CONV_CASES = [pytest.param(impl, length, e, id=f"{length}-{e}-{impl}",
                           marks=[needs_cpp] if impl == "cpp" else [pytest.mark.slow] if e == 70 else [])
              for length, e in [(13, 11), (2, 11), (6, 70)] for impl in ("torch", "cpp")]


@pytest.mark.parametrize("impl, length, e", CONV_CASES)
def test_mamba_causal_conv_equals_conv1d_and_its_gradients_are_exact(impl, length, e):
    """The convolution with its SiLU and hand-written backward against nn.Conv1d: the PyTorch version
    (shifted products) and the compiled one, fed as in the model, a strided view of in_proj's output.
    e = 11 is a whole vector of 8 channels and a partial one; e = 70 is a whole task of 64 channels
    and a partial one; length 2 is shorter than the kernel."""
    from archs.mamba import CausalConvSiLU

    fn = mamba_cpu.CppConvSiLU.apply if impl == "cpp" else CausalConvSiLU.apply
    torch.manual_seed(0)
    xz = torch.randn(2, length, 2 * e, dtype=torch.float64, requires_grad=True)
    conv = torch.nn.Conv1d(e, e, 4, groups=e, padding=3).double()
    x = xz[..., :e]
    ref = torch.nn.functional.silu(conv(x.transpose(1, 2))[..., :length]).transpose(1, 2)
    torch.testing.assert_close(fn(x, conv.weight, conv.bias), ref)
    assert torch.autograd.gradcheck(lambda xz, w, b: fn(xz[..., :e], w, b), (xz, conv.weight, conv.bias))


@pytest.mark.parametrize("impl", ["torch", pytest.param("cpp", marks=needs_cpp)])
def test_mamba_tied_projections_equal_two_mixers_that_share_them(impl):
    """tie_projections computes in_proj and out_proj once for both directions; that must equal
    Caduceus's weight tying: two full mixers, the reverse one holding the same projection weights
    and reading the flipped sequence. With padding, so the flips are within each real length."""
    torch.manual_seed(0)
    tied = Mamba(16, 2, max_len=30, impl=impl, tie_projections=True).double()
    full = Mamba(16, 2, max_len=30, impl=impl).double()
    state = tied.state_dict()
    for i in range(2):  # the reverse mixers' projections are the forward ones'
        for proj in ("in_proj", "out_proj"):
            state[f"blocks.{i}.mixer_rev.{proj}.weight"] = state[f"blocks.{i}.mixer.{proj}.weight"]
    full.load_state_dict(state)
    x = torch.randn(3, 30, 16, dtype=torch.float64)
    mask = torch.ones(3, 30, dtype=torch.bool)
    mask[0, 17:] = mask[2, 5:] = False
    torch.testing.assert_close(tied(x, mask), full(x, mask), atol=1e-10, rtol=1e-10)
    n_proj = sum(p.numel() for n, p in full.named_parameters()
                 if "mixer_rev.in_proj" in n or "mixer_rev.out_proj" in n)
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in tied.parameters()) == n_proj > 0
    with pytest.raises(ValueError, match="tie_projections.*bidirectional=true"):
        Mamba(16, 2, max_len=30, bidirectional=False, tie_projections=True)


def test_mamba_mixer_has_mamba_ssm_parameter_names_and_shapes():
    """The names and shapes of mamba_ssm.Mamba(d_model=16, d_state=8, d_conv=4, expand=2), dt_rank 1:
    a state dict moves between the fused and the PyTorch implementation unchanged."""
    mixer = MambaMixer(16, d_state=8, d_conv=4, expand=2, dt_rank=1, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4,
                       chunk=64)
    shapes = {k: tuple(v.shape) for k, v in mixer.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (64, 16), "conv1d.weight": (32, 1, 4), "conv1d.bias": (32,),
        "x_proj.weight": (17, 32), "dt_proj.weight": (32, 1), "dt_proj.bias": (32,),
        "A_log": (32, 8), "D": (32,), "out_proj.weight": (16, 32),
    }


def test_mamba_impl_is_recorded_and_never_a_silent_fallback(tmp_path, monkeypatch, caplog):
    cfg = {"_target_": "archs.mamba.Mamba", "name": "mamba", "d_model": 16, "n_layers": 1}
    model = build_backbone(OmegaConf.create(cfg | {"impl": "auto"}), max_len=10)
    model(torch.randn(1, 10, 16))
    assert model.impl == ("torch" if mamba_cpu.unavailable_reason() else "cpp")
    model = build_backbone(OmegaConf.create(cfg | {"impl": "torch"}), max_len=10)
    model(torch.randn(1, 10, 16))
    assert model.impl == "torch"
    if not fused_scan_available():
        with pytest.raises(ConfigError, match="impl=cuda needs a CUDA GPU and mamba-ssm"):
            build_backbone(OmegaConf.create(cfg | {"impl": "cuda"}), max_len=10)
    # No compiler: impl=cpp is refused in one line; impl=auto says why and runs the PyTorch scan.
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("SPTBENCH_KERNEL_CACHE", str(tmp_path / "kernels"))
    cpu_kernels.library.cache_clear()
    cpu_kernels.unavailable_reason.cache_clear()
    try:
        for arch in ("mamba", "s4"):
            with pytest.raises(ConfigError, match="impl=cpp: no C\\+\\+ compiler .*no-such-compiler"):
                build_backbone(OmegaConf.create(cfg | {"_target_": f"archs.{arch}.{arch.capitalize()}", "name": arch,
                                                       "impl": "cpp"}), max_len=10)
        model = build_backbone(OmegaConf.create(cfg | {"impl": "auto"}), max_len=10)
        model(torch.randn(1, 10, 16))
        model(torch.randn(1, 10, 16))
        assert model.impl == "torch"
        warnings = [r for r in caplog.records if "compiled CPU scan unavailable" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        cpu_kernels.library.cache_clear()
        cpu_kernels.unavailable_reason.cache_clear()


@needs_cpp
@pytest.mark.parametrize("arch", [Mamba, S4])
def test_cpp_and_torch_paths_give_one_model_the_same_outputs_and_gradients(arch):
    """Same weights, same results: a checkpoint moves between impl=cpp and impl=torch."""
    torch.manual_seed(0)
    cpp = arch(32, 2, max_len=50, impl="cpp")
    ref = arch(32, 2, max_len=50, impl="torch")
    ref.load_state_dict(cpp.state_dict())
    x = torch.randn(3, 50, 32)
    mask = torch.ones(3, 50, dtype=torch.bool)
    mask[1, 30:] = False
    outs = []
    for model in (cpp, ref):
        y = model(x, mask)
        y.pow(2).sum().backward()
        outs.append([y.detach()] + [p.grad for p in model.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert (cpp.impl, ref.impl) == ("cpp", "torch")


@pytest.mark.skipif(not fused_scan_available(), reason="needs a CUDA GPU and mamba-ssm")
def test_mamba_fused_kernels_match_the_torch_path_on_cuda():
    from mamba_ssm import Mamba as MambaSSM

    torch.manual_seed(0)
    theirs = MambaSSM(d_model=64, d_state=16, d_conv=4, expand=2).cuda()
    ours = MambaMixer(64, d_state=16, d_conv=4, expand=2, dt_rank=4, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4,
                      chunk=64).cuda()
    ours.load_state_dict(theirs.state_dict())  # same names and shapes, both ways
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 300, 64, device="cuda", requires_grad=True)
    outs = {}
    runs = (("theirs", lambda: theirs(x)), ("fused", lambda: ours(x, "cuda")), ("torch", lambda: ours(x, "torch")))
    for name, run in runs:
        y = run()
        (grad_x,) = torch.autograd.grad(y.pow(2).sum(), [x])
        outs[name] = (y.detach(), grad_x)
    for name in ("fused", "torch"):
        torch.testing.assert_close(outs[name][0], outs["theirs"][0], atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(outs[name][1], outs["theirs"][1], atol=2e-3, rtol=2e-3)
    backbone = Mamba(64, 2, max_len=300, impl="cuda").cuda()
    backbone(x)
    assert backbone.impl == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch,extra", [("transformer", {}), ("transformer", {"block_size": 16}),
                                        ("s4", {"impl": "torch"}), ("s4d", {}), ("cnn", {}),
                                        ("mamba", {"impl": "torch"})])
def test_every_backbone_on_cuda_matches_its_cpu_reference(arch, extra):
    """The CUDA path of each backbone (our PyTorch code on the GPU; no mamba-ssm needed) against the
    same weights on the CPU, in float32: outputs and every parameter's gradient."""
    import copy
    from pathlib import Path

    torch.manual_seed(0)
    conf = Path(__file__).resolve().parent.parent / "conf" / "arch"
    cfg = OmegaConf.merge(OmegaConf.load(conf / f"{arch}.yaml"), extra)
    cpu = build_backbone(cfg, max_len=64)
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(3, 64, cfg.d_model)
    mask = torch.ones(3, 64, dtype=torch.bool)
    mask[1, 40:] = False
    outs = []
    for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference is plain float32
        torch.backends.cudnn.allow_tf32 = False
        y = model(x.to(dev), mask.to(dev))
        (y * mask.to(dev)[..., None]).pow(2).sum().backward()
        outs.append([y.detach().cpu()] + [p.grad.cpu() for p in model.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-3)
