"""The registry of codec families, keyed by the manifest's payload ``kind``.

A family is one ``Codec`` subclass (latent_codec/families/) that names its ``kind``, the payload class its
manifest section parses into (``payload_type``), how it builds itself from a loaded bundle (``build``), and
whether it takes items of any size. The manifest parser, ``Codec.open`` and everything above them ask this
registry, never a kind by name: adding a family is one module and its ``@register_family`` line
(tests/families/toy.py is one, kept as a test). Manifests without a ``kind`` are flat codes (the first
family; their sealed hashes predate the field).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .codec import Codec

DEFAULT_KIND = "flat"
_FAMILIES: dict[str, type[Codec]] = {}
C = TypeVar("C", bound="type[Codec]")


def register_family(kind: str) -> Callable[[C], C]:
    """Class decorator: ``@register_family("map") class MapCodec(Codec)``."""

    def add(cls: C) -> C:
        if kind in _FAMILIES and _FAMILIES[kind] is not cls:
            raise ValueError(f"codec family {kind!r} is already registered by {_FAMILIES[kind].__qualname__}")
        cls.kind = kind
        _FAMILIES[kind] = cls
        return cls

    return add


def kinds() -> list[str]:
    return sorted(_FAMILIES)


def family(kind: str) -> type[Codec]:
    """The codec class of a payload kind; ValueError naming the kinds this build knows."""
    try:
        return _FAMILIES[kind]
    except KeyError:
        raise ValueError(
            f"payload kind {kind!r} is not a codec family of this build ({', '.join(kinds())})"
        ) from None


def payload_kind(d: dict[str, Any]) -> str:
    return str(d.get("kind", DEFAULT_KIND))


def payload_from_dict(d: dict[str, Any]) -> Any:
    """A manifest's payload section -> its family's payload object (ValueError when it does not parse)."""
    return family(payload_kind(d)).payload_type.from_dict(d)
