"""The model registry: name -> constructor. The CLIs' ``choices=`` read it."""

from __future__ import annotations

from collections.abc import Callable

MODELS: dict[str, type] = {}


def register_model(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        cls.registry_name = name
        MODELS[name] = cls
        return cls

    return wrap


def model_names() -> list[str]:
    import training.models  # noqa: F401  (registers every model)

    return sorted(MODELS)


def build_model(name: str, args: dict):
    """Rebuild a model from its registry name and constructor arguments (as stored in checkpoints)."""
    import training.models  # noqa: F401

    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](**args)
