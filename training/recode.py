"""Switch a sealed bundle to another entropy coder without retraining.

The graphs, the quantiser and the integer tables stay; the manifest names the new coder (and, for code maps,
the size the model was trained on, which then travels in the stream at next to no cost), is sealed again (a new
content hash, so a new bundle id: payloads stored under the old id still need the old bundle) and the bundle is
measured again on its test items through its own codec. This is how the zoo's earlier bundles moved from the ANS stack to the range
coder with the short termination (latent_codec/ans.py) without their training being repeated:

    python -m training.recode zoo/conv-lambda-0.13             # in place, constriction-range32
    python -m training.recode zoo/vq-lambda-0 --out /tmp/vq-range --coder constriction-range32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latent_codec import ans
from latent_codec.bundle import load_bundle
from latent_codec.datasets import load
from latent_codec.errors import CodecError
from latent_codec.factorized_prior import switch_coder, table_sets
from training.bundle_writer import write_bundle


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.recode", description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path, help="a sealed bundle directory")
    p.add_argument("--coder", default=ans.DEFAULT_CODER, choices=ans.CODERS)
    p.add_argument("--out", type=Path, default=None, help="where the recoded bundle goes (default: in place)")
    p.add_argument(
        "--data", default=None, help="test items to measure on (default: the data the bundle was trained on)"
    )
    p.add_argument("--test-limit", type=int, default=0, help="test items measured (0 = all)")
    return p.parse_args(argv)


def recode(bundle_dir: Path, out: Path, coder: str, data: str | None, test_limit: int = 0) -> dict:
    """Recode one bundle into ``out`` (may be bundle_dir); returns {"from", "to", "metrics"}."""
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    tables = table_sets(m.payload)
    if not tables:
        raise CodecError(f"{bundle_dir}: format {m.payload.format} is not entropy-coded; nothing to recode")
    old_id = m.bundle_id
    switch_coder(m.payload, coder, (int(m.input.shape[1]), int(m.input.shape[2])))
    spec = data or (m.training.get("config") or {}).get("data") or "fashion-mnist"
    test = load(spec, "test")
    if test_limit:
        test.x = test.x[:test_limit]
    assert bundle.encoder_bytes is not None and bundle.decoder_bytes is not None
    m.seal(bundle.encoder_bytes, bundle.decoder_bytes)
    if m.bundle_id != old_id:
        m.training["recoded_from"] = old_id
    write_bundle(out, m, bundle.encoder_bytes, bundle.decoder_bytes, test, force=out == bundle_dir)
    return {"from": old_id, "to": m.bundle_id, "metrics": m.metrics["test"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        r = recode(args.bundle, args.out or args.bundle, args.coder, args.data, args.test_limit)
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t = r["metrics"]
    print(
        f"{r['from']} -> {r['to']}: {t['bytes_per_item']:.2f} B/item, {t['psnr']:.2f} dB on {t['items']} items"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
