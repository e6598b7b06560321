"""`make demo`: train a small convolutional autoencoder, export a bundle, serve it, run the edge client; then
compress one photograph with the zoo's photo bundle.

Every step is a real process: training (torch), export (torch + ONNX Runtime
parity check), the cloud server (gRPC, ONNX Runtime) and the edge client
(ONNX Runtime, no torch), over the Fashion-MNIST test split (or digits where
Fashion-MNIST is not installed). The photograph (a held-out one from `make photos`, or scikit-image's where
those are not installed) goes through `edge.cli encode` and `decode --compare`, which writes it beside its
reconstruction.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from latent_codec.datasets import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], capture: bool = False) -> str:
    print("$ " + " ".join(cmd), flush=True)
    if not capture:
        subprocess.run(cmd, check=True, cwd=ROOT)
        return ""
    out = subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.PIPE, text=True).stdout
    print(out, end="", flush=True)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--code-dim", type=int, default=32, help="32 dims x 8 bits = 32 bytes per 784-byte image")
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "demo")
    p.add_argument(
        "--doc", type=Path, default=None, help="also write the report as Markdown here (docs/demo.md)"
    )
    p.add_argument(
        "--photo-bundle", type=Path, default=PHOTO_BUNDLE, help="the colour bundle for the photo step"
    )
    return p.parse_args(argv)


PHOTO_BUNDLE = ROOT / "zoo" / "photo" / "photo-deep-lambda-0.005"
HELD_OUT = ROOT / "data" / "photos" / "heldout" / "plasma-ColorfulCups.jpg"
PHOTO_SIDE = 1024  # the photograph's longest side in the demo: a phone's share-size picture


def photo_step(py: str, bundle: Path, work: Path) -> str:
    """One photograph through the edge's encode and decode --compare; -> the report lines (empty: skipped)."""
    import numpy as np
    from PIL import Image

    if not (bundle / "manifest.json").is_file():
        print(
            f"\nNOTE: no photo bundle at {bundle}: skipping the photograph (bench/train_ladder.py --preset photo)"
        )
        return ""
    folder = work / "photo"
    folder.mkdir(parents=True, exist_ok=True)
    if HELD_OUT.is_file():
        img, source = Image.open(HELD_OUT).convert("RGB"), f"{HELD_OUT.name} (held out from training)"
    else:
        from skimage import data

        img, source = (
            Image.fromarray(data.chelsea()),
            "scikit-image's chelsea (make photos installs held-out ones)",
        )
    f = PHOTO_SIDE / max(img.size)
    if f < 1:
        img = img.resize((round(img.size[0] * f), round(img.size[1] * f)), Image.Resampling.LANCZOS)
    original = folder / "photo.png"
    img.save(original)
    codes, out = work / "photo.aec", work / "photo-out"
    run(
        [
            py,
            "-m",
            "edge.cli",
            "encode",
            "--bundle",
            str(bundle),
            "--data",
            str(folder),
            "--out",
            str(codes),
            "--force",  # a second make demo replaces the first one's code file
            "--no-progress",
        ]
    )
    report = run(
        [
            py,
            "-m",
            "edge.cli",
            "decode",
            "--bundle",
            str(bundle),
            "--codes",
            str(codes),
            "--out",
            str(out),
            "--compare",
            str(folder),
            "--force",
            "--no-progress",
        ],
        capture=True,
    )
    w, h = img.size
    size = codes.stat().st_size
    raw = np.asarray(img).nbytes
    return (
        f"photograph: {source}, {w}x{h}\n"
        f"  code file {size:,} bytes = {8 * size / (w * h):.3f} bits per pixel ({raw / size:.0f}:1 against raw RGB)\n"
        + "".join(f"  {line}\n" for line in report.strip().splitlines())
        + f"  original | reconstruction: {(out / 'compare' / 'photo.png').relative_to(ROOT)}\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    py = sys.executable
    data = "fashion-mnist"
    if not FASHION_MNIST_DIR.is_dir():
        print(
            f"NOTE: Fashion-MNIST is not installed at {FASHION_MNIST_DIR}; using scikit-learn's 8x8 digits."
        )
        data = "digits"
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    ckpt, bundle = work / "conv.pt", work / "bundles" / "conv-affine8"
    t0 = time.perf_counter()
    model_args = ["--arg", f"code_dim={args.code_dim}", "--arg", "channels=(16,32)", "--arg", "pool='stride'"]
    if data == "digits":
        model_args = ["--arg", f"code_dim={min(args.code_dim, 16)}", "--arg", "channels=(16,32)"]
    run(
        [
            py,
            "-m",
            "training.train",
            "--model",
            "conv",
            *model_args,
            "--data",
            data,
            "--epochs",
            str(args.epochs if data != "digits" else 60),
            "--batch-size",
            "256",
            "--lr",
            "4e-3",
            "--out",
            str(ckpt),
            "--no-progress",
        ]
    )
    run([py, "-m", "training.export", "--checkpoint", str(ckpt), "--out", str(bundle), "--quant", "affine8"])
    port_file = work / "server.port"
    port_file.unlink(missing_ok=True)
    print(f"$ {py} -m cloud.server --bundles {bundle.parent} --address 127.0.0.1:0", flush=True)
    server = subprocess.Popen(
        [
            py,
            "-m",
            "cloud.server",
            "--bundles",
            str(bundle.parent),
            "--address",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
    )
    try:
        for _ in range(300):
            if port_file.exists() or server.poll() is not None:
                break
            time.sleep(0.1)
        if not port_file.exists():
            print("error: the server did not start", file=sys.stderr)
            return 1
        port = port_file.read_text().strip()
        print()
        report = run(
            [
                py,
                "-m",
                "edge.cli",
                "evaluate",
                "--bundle",
                str(bundle),
                "--server",
                f"127.0.0.1:{port}",
                "--data",
                data,
                "--split",
                "test",
                "--no-progress",
                "--json",
                str(work / "report.json"),
            ],
            capture=True,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    photo = photo_step(py, args.photo_bundle, work)
    elapsed = time.perf_counter() - t0
    if args.doc:
        args.doc.write_text(
            "# Latest `make demo` report\n\n"
            f"Generated by `python -m tools.demo --doc {args.doc}` on {time.strftime('%Y-%m-%d')}; "
            f"whole demo (train {args.epochs} epochs, export, serve, edge) took {elapsed:.0f} s on this machine "
            f"({os.cpu_count()} cores).\n\n```\n{report}```\n"
            + (
                f"\nThen one photograph through the zoo's photo bundle ({args.photo_bundle.name}):\n\n```\n{photo}```\n"
                if photo
                else ""
            )
        )
    print(
        f"\ndemo finished in {time.perf_counter() - t0:.0f} s; bundle at {bundle.relative_to(ROOT)}, "
        f"report at {(work / 'report.json').relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
