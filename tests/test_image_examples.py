"""Each image's own usage examples (the `docker run` lines atop deploy/Dockerfile.*), run without Docker.

What an image would run, emulated: a virtualenv (`python -m venv`) holding only the requirement files the
Dockerfile installs (pip, through the machine's configured indexes and cache), only the code directories it
COPYs, its ENTRYPOINT/CMD, WORKDIR and ENV PYTHONPATH, with each example's -v mounts mapped to temporary
directories and its ports to free local ports. The requirement files nest (runtime.txt in cloud.txt in
train.txt), so one venv grows stage by stage and holds, at each stage, exactly one image's packages: edge,
then cloud, then train. Examples that need a GPU (--gpus) are not run. The CUDA variant of the training
image (PyPI's CUDA torch wheel) and the CPU variant's PyTorch wheel index are not reached from here: the
venv installs the CPU torch the machine's pip finds for requirements/train.txt.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from latent_codec import datasets
from tests.helpers import ROOT, ServerProcess, free_port, stored_count, tiny_bundle, wait_until
from tests.helpers.dockerfiles import instructions, pip_files

ADDRESS = re.compile(r"\b(?:0\.0\.0\.0|127\.0\.0\.1):(\d+)\b")


@dataclass
class Image:
    name: str
    requirements: list[str]  # files of `pip install -r`, in order
    copies: list[str]  # code directories COPY'd into the image
    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    env: dict[str, str]
    healthcheck: list[str] = field(default_factory=list)
    examples: list[list[str]] = field(default_factory=list)  # `docker run` argv after "docker run"


def parse_image(name: str) -> Image:
    path = ROOT / "deploy" / f"Dockerfile.{name}"
    ins = instructions(path)
    img = Image(name, pip_files(path), [], [], [], "/", {})
    for op, rest in ins:
        if op == "COPY" and not rest.startswith("requirements/"):
            img.copies.append(rest.split()[0].rstrip("/"))
        elif op in ("ENTRYPOINT", "CMD"):
            setattr(img, op.lower(), json.loads(rest))
        elif op == "WORKDIR":
            img.workdir = rest
        elif op == "ENV":
            img.env.update(w.split("=", 1) for w in shlex.split(rest) if "=" in w)
        elif op == "HEALTHCHECK":
            img.healthcheck = json.loads(rest.split("CMD", 1)[1])
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    text = re.sub(r"\\\s*\n", " ", "\n".join(header))
    img.examples = [shlex.split(ln)[2:] for ln in text.splitlines() if ln.startswith("docker run ")]
    return img


@dataclass
class Run:
    """One `docker run` example, mapped onto this machine."""

    image: str
    argv: list[str]  # the process to start
    cwd: Path
    needs_gpu: bool


class Machine:
    """Host directories for container paths, free ports for container ports, one venv, one app dir per image."""

    def __init__(self, tmp: Path, venv: Path, mounts: dict[str, Path], ports: dict[int, int]):
        self.tmp, self.venv, self.mounts, self.ports = tmp, venv, mounts, ports

    def path(self, arg: str) -> str:
        for dst, host in self.mounts.items():
            if arg == dst or arg.startswith(dst + "/"):
                return str(host) + arg[len(dst) :]
        return ADDRESS.sub(lambda m: f"127.0.0.1:{self.ports.get(int(m.group(1)), int(m.group(1)))}", arg)

    def app(self, img: Image) -> Path:
        app = self.tmp / f"app-{img.name}"
        if not app.exists():
            for d in img.copies:
                shutil.copytree(ROOT / d, app / d, ignore=shutil.ignore_patterns("__pycache__"))
        return app

    def env(self, img: Image) -> dict[str, str]:
        env = {"PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "HOME": str(self.mounts["/home/aecodec"])}
        env.update({k: self.path(v) if k != "PYTHONPATH" else str(self.app(img)) for k, v in img.env.items()})
        return env

    def command(self, img: Image, words: list[str]) -> list[str]:
        assert words[0] == "python", words
        return [str(self.venv / "bin" / "python"), *[self.path(w) for w in words[1:]]]

    def example(self, img: Image, docker_args: list[str]) -> Run:
        i, gpu = 0, False
        while docker_args[i].startswith("-"):
            opt = docker_args[i]
            if opt in ("-v", "--volume"):
                dst = docker_args[i + 1].split(":")[1]
                assert dst in self.mounts, f"{img.name}: the test has nothing to mount at {dst}"
            gpu |= opt == "--gpus"
            i += 1 if opt in ("--rm", "-it", "-d") else 2
        assert docker_args[i].split(":")[0] == f"aecodec-{img.name}", docker_args
        args = docker_args[i + 1 :] or img.cmd
        workdir = self.app(img) if img.workdir == "/app" else Path(self.path(img.workdir))
        return Run(img.name, self.command(img, [*img.entrypoint, *args]), workdir, gpu)

    def run(self, img: Image, run: Run, timeout: float = 240) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            run.argv, cwd=run.cwd, env=self.env(img), capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, f"{shlex.join(run.argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc

    def pip_install(self, img: Image) -> None:
        for req in img.requirements:
            pip = [str(self.venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(ROOT / req)]
            proc = subprocess.run(pip, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, proc.stderr[-3000:]

    def has(self, module: str) -> bool:
        probe = [str(self.venv / "bin" / "python"), "-c", f"import {module}"]
        return subprocess.run(probe, capture_output=True, cwd=self.tmp, timeout=120).returncode == 0


def test_examples_parse_from_every_dockerfile():
    """The emulation below reads what it runs from the Dockerfiles: check it finds everything (fast)."""
    images = {n: parse_image(n) for n in ("edge", "cloud", "train")}
    assert images["edge"].requirements == ["requirements/runtime.txt"]
    assert images["cloud"].requirements == ["requirements/cloud.txt"]
    assert images["train"].requirements == ["requirements/train.txt"]
    assert (
        images["edge"].entrypoint == ["python", "-m", "edge.cli"]
        and images["edge"].env["PYTHONPATH"] == "/app"
    )
    assert [e[-1] for e in images["cloud"].examples] == ["aecodec-cloud"]  # runs the image's CMD
    assert images["cloud"].healthcheck[:3] == ["python", "-m", "cloud.healthcheck"]
    assert len(images["edge"].examples) == 2 and len(images["train"].examples) == 5
    assert all(img.examples for img in images.values())


@pytest.mark.slow
def test_each_image_runs_its_own_examples_with_only_its_requirements(tmp_path_factory, tmp_path):
    t0 = time.monotonic()
    bundle = tiny_bundle(tmp_path_factory)
    mounts = {
        p: tmp_path / p.strip("/").replace("/", "-") for p in ("/bundles", "/data", "/runs", "/home/aecodec")
    }
    for d in mounts.values():
        d.mkdir()
    shutil.copytree(bundle, mounts["/bundles"] / "digits")
    from PIL import Image as PILImage

    photos = datasets.load("digits", "test").x[:40]
    for i, item in enumerate(photos):
        PILImage.fromarray(item[0]).save(mounts["/data"] / f"{i:03d}.png")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    images = {n: parse_image(n) for n in ("edge", "cloud", "train")}

    # -- the edge image, against a cloud server with a store (run from the test's own environment) ------------
    server = ServerProcess(mounts["/bundles"], str(tmp_path / "cloud.sqlite"), tmp_path).start()
    machine = Machine(tmp_path, venv, mounts, {50051: server.port})
    edge = images["edge"]
    try:
        machine.pip_install(edge)
        assert machine.has("onnxruntime") and not machine.has("sklearn") and not machine.has("torch")
        evaluate, ingest = (machine.example(edge, e) for e in edge.examples)
        out = machine.run(edge, evaluate).stdout
        assert re.search(r"^items\s+40$", out, re.M) and "PSNR (server)" in out, out
        machine.run(edge, ingest)
        assert stored_count(server.target, "") == 40  # every device's items: the one this spool named
        # digits is no device's data: a one-line error, not a traceback
        digits = Run("edge", [*evaluate.argv[:-1], "digits"], evaluate.cwd, False)
        proc = subprocess.run(
            digits.argv, cwd=digits.cwd, env=machine.env(edge), capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 2 and "scikit-learn" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        server.kill(signal.SIGTERM)
    seconds = {"edge": time.monotonic() - t0}

    # -- the cloud image: its CMD serves the mounted bundles; its HEALTHCHECK says SERVING; edge decodes -------
    cloud = images["cloud"]
    machine.ports = {50051: free_port(), 9100: free_port()}
    machine.pip_install(cloud)
    assert machine.has("psycopg") and not machine.has("torch")
    [serve] = [machine.example(cloud, e) for e in cloud.examples]
    proc = subprocess.Popen(
        serve.argv, cwd=serve.cwd, env=machine.env(cloud), stderr=subprocess.PIPE, text=True
    )
    health = machine.command(cloud, cloud.healthcheck)
    try:
        wait_until(
            lambda: (
                subprocess.run(health, env=machine.env(cloud), capture_output=True, timeout=30).returncode
                == 0
            ),
            60,
            "the cloud image's healthcheck to pass",
            step=0.5,
        )
        assert re.search(
            r"^items\s+40$", machine.run(edge, machine.example(edge, edge.examples[0])).stdout, re.M
        )  # now through the cloud image's server
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()[-2000:]
    seconds["cloud"] = time.monotonic() - t0 - sum(seconds.values())

    # -- the training image: train, train under torchrun, export, a Triton repository ------------------------
    train = images["train"]
    machine.pip_install(train)
    runs = [machine.example(train, e) for e in train.examples]
    assert [r.needs_gpu for r in runs] == [False, False, False, False, True]
    for run in runs:
        if not run.needs_gpu:
            machine.run(train, run)
    r = mounts["/runs"]
    assert (r / "dense.pt").is_file() and (r / "dense-ddp.pt").is_file()
    assert (r / "bundle-dense" / "manifest.json").is_file()
    assert len(list((r / "triton-repo").glob("*/config.pbtxt"))) == 2
    seconds["train"] = time.monotonic() - t0 - sum(seconds.values())
    print(f"image stages (venv install + examples), seconds: {seconds}")
