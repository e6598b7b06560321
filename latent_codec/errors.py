"""Errors that carry a message meant for a person, not a traceback."""

from __future__ import annotations


class CodecError(Exception):
    """Base class: the message names the problem (file, field, expected vs got)."""


class DataError(CodecError):
    """An input file or folder is missing, malformed or of the wrong shape."""


class BundleError(CodecError):
    """A model bundle is missing, corrupt, or inconsistent with its manifest."""


class PayloadError(CodecError):
    """Code payloads whose size, format or content do not fit the manifest."""
