"""Our backbones against the best public implementation of the same architecture, side by side:
`python -m bench.reference --s4d PATH/s4d.py --mamba PATH/mambapy/mamba.py`.

The references are never part of this repository: fetch them yourself and pass their paths.
- transformer: torch.nn.TransformerEncoder (pre-LN, GELU, 4 heads, FFN 4·d, a final LayerNorm), always
  there; ours at pos=sinusoidal, so neither adds per-head position work;
- s4d: state-spaces/s4 models/s4/s4d.py (the authors' minimal S4D, causal), stacked as our blocks are
  (x + S4D(LN(x)), a final LN); ours at bidirectional=false. Its one import from that repository,
  src.models.nn.DropoutNd, is only used for dropout > 0 and is stubbed when the file stands alone;
- mamba: alxndrTL/mamba.py mambapy/mamba.py (with its pscan.py beside it: the parallel scan), causal;
  ours at bidirectional=false, once per --mamba-impls.
A reference whose path is not given or does not exist is skipped with one line.

Each measurement is one fresh process timing full training steps (forward, backward, AdamW) at
--tokens tokens per batch, as bench/throughput.py does; ours and the reference alternate, --repeats
times, so a slow spell of a shared machine hits both. Printed per pair and length: the median tokens/s
of each and their ratio (ours / reference; > 1 = ours faster), with the ratios' range over repeats.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import types
from pathlib import Path

from bench.throughput import DEFAULTS, build, in_fresh_process, median_step_seconds

ROOT = Path(__file__).resolve().parent.parent
OURS = {"transformer": ("transformer", ["pos=sinusoidal", "n_heads=4"]),
        "s4d": ("s4d", ["bidirectional=false"]), "mamba": ("mamba", ["bidirectional=false"])}


def load_file(path: Path) -> types.ModuleType:
    """A reference file as a module named after its folder (mambapy/mamba.py -> mambapy.mamba), with
    that folder's parent on sys.path so that its sibling imports (from mambapy.pscan import ...) work."""
    sys.path.insert(0, str(path.parent.parent))
    try:
        importlib.import_module("src.models.nn")
    except ImportError:  # s4d.py outside its repository
        import torch

        for name in ("src", "src.models", "src.models.nn"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["src.models.nn"].DropoutNd = torch.nn.Dropout
    spec = importlib.util.spec_from_file_location(f"{path.parent.name}.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def reference_model(kind: str, path: str | None, d_model: int, n_layers: int):
    """The public implementation as a (B, L, D) -> (B, L, D) module, in training mode."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if kind == "transformer":
        layer = nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        return nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
    module = load_file(Path(path))
    if kind == "mamba":
        return module.Mamba(module.MambaConfig(d_model=d_model, n_layers=n_layers))

    class Stack(nn.Module):  # x + S4D(LN(x)) per layer, a final LN: our SSMStack's layout
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(module.S4D(d_model, d_state=64, transposed=False) for _ in range(n_layers))
            self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
            self.norm = nn.LayerNorm(d_model)

        def forward(self, x):
            for layer, norm in zip(self.layers, self.norms):
                x = x + layer(norm(x))[0]
            return self.norm(x)

    return Stack()


def measure(side: str, kind: str, length: int, args: dict, queue) -> None:
    """Child process: side "ours:<overrides>" or "ref" -> queue.put({"tokens_per_s": ...})."""
    try:
        queue.put(_measure(side, kind, length, args))
    except Exception as exc:  # report, do not kill the whole table
        queue.put({"error": f"{type(exc).__name__}: {exc}"[:300]})


def _measure(side: str, kind: str, length: int, args: dict) -> dict:
    import torch

    device, batch = args["device"], max(1, args["tokens"] // length)
    x = torch.randn(batch, length, args["d_model"], device=device)
    if side == "ref":
        model = reference_model(kind, args["paths"].get(kind), args["d_model"], args["n_layers"]).to(device).train()
        forward = model
    else:
        arch, overrides = OURS[kind]
        model = build(arch, length, {**args, "set": [*overrides, *side.split(":")[1].split()]})
        mask = torch.ones(batch, length, dtype=torch.bool, device=device)
        forward = lambda x: model(x, mask)  # noqa: E731 - the same call shape as the reference's
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = forward(x).float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = median_step_seconds(step, device, args["warmup"], args["steps"])
    return {"tokens_per_s": batch * length / seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--s4d", help="path to state-spaces/s4's models/s4/s4d.py")
    ap.add_argument("--mamba", help="path to alxndrTL/mamba.py's mambapy/mamba.py (pscan.py beside it)")
    ap.add_argument("--mamba-impls", nargs="+", default=["cpp", "torch"], help="ours, one row each (cuda on a GPU)")
    ap.add_argument("--archs", nargs="+", default=list(OURS), choices=list(OURS))
    ap.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096])
    ap.add_argument("--tokens", type=int, default=DEFAULTS["tokens"])
    ap.add_argument("--d-model", type=int, default=DEFAULTS["d_model"])
    ap.add_argument("--n-layers", type=int, default=DEFAULTS["n_layers"])
    ap.add_argument("--repeats", type=int, default=3, help="alternations of ours and the reference")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per process; their median is used")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    args = ap.parse_args(argv)
    paths = {"s4d": args.s4d, "mamba": args.mamba}
    pairs = []  # (label, kind, side of ours)
    for kind in args.archs:
        if kind in paths and not (paths[kind] and Path(paths[kind]).is_file()):
            print(f"skip {kind}: no reference file ({paths[kind] or f'pass --{kind} PATH'})", flush=True)
            continue
        impls = args.mamba_impls if kind == "mamba" else [None]
        pairs += [(f"{kind}:{impl}" if impl else kind, kind, f"ours:impl={impl}" if impl else "ours:")
                  for impl in impls]
    child = {"device": args.device, "d_model": args.d_model, "n_layers": args.n_layers, "tokens": args.tokens,
             "steps": args.steps, "warmup": args.warmup, "paths": paths}
    print(f"# {args.device}, d_model {args.d_model}, {args.n_layers} layers, {args.tokens} tokens per step, "
          f"{args.repeats} alternations, median of {args.steps} steps each", flush=True)
    for length in args.lengths:
        for label, kind, ours in pairs:
            ratios, tok = [], {"ours": [], "ref": []}
            for _ in range(args.repeats):
                rows = {side: in_fresh_process(measure, (side_arg, kind, length, child), args.timeout)
                        for side, side_arg in (("ours", ours), ("ref", "ref"))}
                errors = [f"{side}: {r['error']}" for side, r in rows.items() if "error" in r]
                if errors:
                    print(f"{label:12s} L={length:6d}  {'; '.join(errors)}", flush=True)
                    break
                for side in tok:
                    tok[side].append(rows[side]["tokens_per_s"])
                ratios.append(rows["ours"]["tokens_per_s"] / rows["ref"]["tokens_per_s"])
            if ratios:
                ours_t, ref_t = statistics.median(tok["ours"]), statistics.median(tok["ref"])
                print(f"{label:12s} L={length:6d}  ours {ours_t:9.0f} tok/s  reference {ref_t:9.0f} tok/s  "
                      f"ratio {ours_t / ref_t:5.2f}x (per alternation {min(ratios):.2f}-{max(ratios):.2f})",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
