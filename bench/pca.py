"""The linear baseline: PCA with k components, coded with the project's own quantiser and entropy coder.

Two quantiser families, both expressed as the manifest's affine quantiser and
coded with FactorizedPrior (counts on training codes) + ANS through
FlatPayload.pack/unpack, so PCA pays exactly the framing the project pays:
- per-dimension ``bits`` between each component's training min and max;
- one uniform step for every component (the rate-distortion-sensible choice
  for a Gaussian-like source: low-variance components collapse to one symbol
  and cost almost nothing).
The reported curve is the Pareto front over the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latent_codec.bundle import InputSpec
from latent_codec.codec import Codec
from latent_codec.factorized_prior import FactorizedPrior
from latent_codec.families.flat import FlatCodec, FlatPayload
from latent_codec.quantisation import Quantiser
from latent_codec.transforms import FunctionTransforms

KS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)  # k 1-2 and 2 bits reach the few-byte end of the ladder
BITS = (2, 3, 4, 5, 6)
UNIFORM_KS = (16, 32, 64, 128)
STEPS = (
    0.15,
    0.25,
    0.4,
    0.6,
    0.9,
    1.3,
    2.0,
    3.0,
    4.5,
    6.5,
)  # on the [0, 1]-pixel PCA code scale (norms up to ~15)
MAX_BITS = 12


@dataclass
class PCA:
    mean: np.ndarray  # (P,)
    components: np.ndarray  # (P, K) orthonormal columns, by decreasing variance

    @classmethod
    def fit(cls, x_unit: np.ndarray, k_max: int) -> PCA:
        x = x_unit.reshape(len(x_unit), -1).astype(np.float64)
        mean = x.mean(axis=0)
        xc = x - mean
        cov = xc.T @ xc / len(x)
        vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1][:k_max]
        return cls(mean, vecs[:, order])

    def encode(self, x_unit: np.ndarray, k: int) -> np.ndarray:
        return (x_unit.reshape(len(x_unit), -1).astype(np.float64) - self.mean) @ self.components[:, :k]

    def decode(self, z: np.ndarray) -> np.ndarray:
        k = z.shape[1]
        return z.astype(np.float64) @ self.components[:, :k].T + self.mean


def uniform_quantizer(train_codes: np.ndarray, step: float) -> Quantiser:
    """An affine quantiser with the same step for every dimension, covering the training range."""
    lo = np.floor(train_codes.min(axis=0) / step) * step
    span = train_codes.max(axis=0) - lo
    bits = int(np.clip(np.ceil(np.log2(span.max() / step + 1)), 2, MAX_BITS))
    hi = lo + step * ((1 << bits) - 1)
    return Quantiser("affine", bits, [float(v) for v in lo], [float(v) for v in hi])


def payload_specs(pca: PCA, train_unit: np.ndarray) -> list[tuple[str, int, FlatPayload]]:
    """Every (label, k, spec) of the sweep, quantiser and prior fitted on training codes."""
    out = []
    z_all = pca.encode(train_unit, max(max(KS), max(UNIFORM_KS))).astype(np.float32)  # columns are nested
    for k in KS:
        z = z_all[:, :k]
        for b in BITS:
            q = Quantiser.fit_affine(z, b)
            out.append(
                (f"PCA k{k} affine{b}", k, FlatPayload(q, k, FactorizedPrior.fit(q.quantise(z), q.levels)))
            )
    for k in UNIFORM_KS:
        z = z_all[:, :k]
        for step in STEPS:
            q = uniform_quantizer(z, step)
            out.append(
                (f"PCA k{k} step{step:g}", k, FlatPayload(q, k, FactorizedPrior.fit(q.quantise(z), q.levels)))
            )
    return out


def codec(pca: PCA, spec: FlatPayload, k: int, items: np.ndarray) -> Codec:
    """PCA with k components as a Codec: the project's own scaling, quantiser, coder and layout around it."""
    transforms = FunctionTransforms(
        lambda x: pca.encode(x, k).astype(np.float32), lambda z: pca.decode(z).astype(np.float32)
    )
    return FlatCodec(InputSpec.of_items(items), [k], spec, transforms, bundle_id=f"pca-k{k}")


def roundtrip(pca: PCA, spec: FlatPayload, k: int, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items -> (payload bytes per item, raw reconstructions) through the Codec's encode and decode."""
    c = codec(pca, spec, k, items)
    payloads = c.encode(items)
    return np.array([len(p) for p in payloads]), c.decode(payloads)
