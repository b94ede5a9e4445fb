"""The error types of camlens: every problem with the caller's input is a :class:`CamlensError` whose message says
what was wrong and what to do (the CLI prints it as one line)."""

from __future__ import annotations


class CamlensError(ValueError):
    """A problem with the caller's model, layer, classes or input, with a message meant for people."""


class NotAGapClassifierError(CamlensError):
    """The model does not end in global average pooling followed by one linear layer, so CAM does not apply."""
