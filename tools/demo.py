"""`make demo`: train a small convolutional autoencoder, export a bundle, serve it, run the edge client.

Every step is a real process: training (torch), export (torch + ONNX Runtime
parity check), the cloud server (gRPC, ONNX Runtime) and the edge client
(ONNX Runtime, no torch), over the Fashion-MNIST test split (or digits where
Fashion-MNIST is not installed).
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


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--code-dim", type=int, default=32, help="32 dims x 8 bits = 32 bytes per 784-byte image")
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "demo")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    py = sys.executable
    data = "fashion-mnist"
    if not FASHION_MNIST_DIR.is_dir():
        print(f"NOTE: Fashion-MNIST is not installed at {FASHION_MNIST_DIR}; using scikit-learn's 8x8 digits.")
        data = "digits"
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    ckpt, bundle = work / "conv.pt", work / "bundles" / "conv-affine8"
    t0 = time.perf_counter()
    model_args = ["--arg", f"code_dim={args.code_dim}", "--arg", "channels=(32,64)", "--arg", "pool='stride'"]
    if data == "digits":
        model_args = ["--arg", f"code_dim={min(args.code_dim, 16)}", "--arg", "channels=(16,32)"]
    run([py, "-m", "training.train", "--model", "conv", *model_args, "--data", data,
         "--epochs", str(args.epochs if data != "digits" else 60), "--out", str(ckpt), "--no-progress"])
    run([py, "-m", "training.export", "--checkpoint", str(ckpt), "--out", str(bundle), "--quant", "affine8"])
    port_file = work / "server.port"
    port_file.unlink(missing_ok=True)
    print(f"$ {py} -m cloud.server --bundles {bundle.parent} --address 127.0.0.1:0", flush=True)
    server = subprocess.Popen([py, "-m", "cloud.server", "--bundles", str(bundle.parent), "--address", "127.0.0.1:0",
                               "--port-file", str(port_file), "--log-level", "WARNING"], cwd=ROOT)
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
        run([py, "-m", "edge.cli", "evaluate", "--bundle", str(bundle), "--server", f"127.0.0.1:{port}",
             "--data", data, "--split", "test", "--no-progress", "--json", str(work / "report.json")])
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; bundle at {bundle.relative_to(ROOT)}, "
          f"report at {(work / 'report.json').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
