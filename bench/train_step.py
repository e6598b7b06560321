"""What one training step of a spatial model costs on this machine, per architecture option and CPU setting.

    python -m bench.train_step --data data/crops/photo-64.npz --out docs/train_step.md

One step = forward, rate-distortion loss, backward, gradient clipping and an Adam step on a batch of 64x64
photo crops, as training.train runs it. Every option is timed in the same process, round-robin (a few steps
of each in turn, --rounds times), so the machine's load (it is shared) hits all of them alike; the table gives
the median seconds per step and the ratio to the first row. Settings tried: threads, channels_last memory
format, torch.compile.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ARCHS = {
    "gdn k5 hyperprior": {"gdn": True, "kernel": 5, "entropy": "hyperprior"},
    "relu k5 hyperprior": {"gdn": False, "kernel": 5, "entropy": "hyperprior"},
    "gdn k3 hyperprior": {"gdn": True, "kernel": 3, "entropy": "hyperprior"},
    "gdn k5 meanscale": {"gdn": True, "kernel": 5, "entropy": "meanscale"},
    "relu k3 meanscale": {"gdn": False, "kernel": 3, "entropy": "meanscale"},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench-train-step", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/crops/photo-64.npz")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--code-channels", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="timed steps per option per round")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def _setup(arch: dict, args, channels_last: bool, compiled: bool):
    from training.rate import build_rate
    from training.registry import build_model
    from training.stability import GradClipper

    torch.manual_seed(0)
    model = build_model(
        "spatial",
        {
            "input_shape": [3, 64, 64],
            "channels": args.channels,
            "code_channels": args.code_channels,
            "hyper_channels": 32,
            **arch,
        },
    )
    model.quant_proxy = "mixed"
    rate = build_rate(model, 0.004)
    opt = torch.optim.Adam([*model.parameters(), *rate.parameters()], lr=1e-4)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if compiled else model
    clip = GradClipper(-1.0)

    def step(xb: torch.Tensor) -> None:
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        out = fwd(xb)
        loss = ((out["x_hat"] - xb) ** 2).flatten(1).sum(1).mean() + 0.004 * out["bits"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip(model.parameters())
        opt.step()

    return step


def main(argv: list[str] | None = None) -> int:
    from latent_codec import datasets
    from training.data import to_tensor

    args = parse_args(argv)
    x = to_tensor(datasets.load(args.data, "train"))[:2000]
    variants = [(name, arch, 1, False, False) for name, arch in ARCHS.items()]
    base = next(iter(ARCHS.values()))
    variants += [
        ("gdn k5 hyperprior, channels_last", base, 1, True, False),
        ("gdn k5 hyperprior, 2 threads", base, 2, False, False),
    ]
    if args.compile:
        variants.append(("gdn k5 hyperprior, torch.compile", base, 1, False, True))
    steps = {}
    t0 = time.perf_counter()
    for name, arch, _threads, cl, comp in variants:
        torch.set_num_threads(1)
        steps[name] = _setup(arch, args, cl, comp)
    times: dict[str, list[float]] = {name: [] for name, *_ in variants}
    g = torch.Generator().manual_seed(0)
    for r in range(args.rounds + 1):  # round 0 warms up (and compiles)
        for name, _arch, threads, _cl, _comp in variants:
            torch.set_num_threads(threads)
            for _ in range(args.steps):
                xb = x[torch.randint(0, len(x), (args.batch_size,), generator=g)]
                t = time.perf_counter()
                steps[name](xb)
                if r:
                    times[name].append(time.perf_counter() - t)
        print(f"round {r} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    ref = statistics.median(times[variants[0][0]])
    lines = [
        "# One training step of the spatial model on 64x64 photo crops",
        "",
        f"- command: `python -m bench.train_step {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- batch {args.batch_size} crops 64x64x3, {args.channels} channels, {args.code_channels} code channels, "
        f"32 hyper channels; forward + rate-distortion loss + backward + clipping + Adam; median of "
        f"{args.rounds * args.steps} steps per row, rows interleaved round-robin in one process on a shared "
        f"2-core machine; run time {time.perf_counter() - t0:.0f} s.",
        "",
        "| option | threads | s/step | ms per crop | vs first row |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, _arch, threads, _cl, _comp in variants:
        med = statistics.median(times[name])
        lines.append(
            f"| {name} | {threads} | {med:.3f} | {1000 * med / args.batch_size:.1f} | {med / ref:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
