"""Every public name of ``camlens.__all__`` has a Google-style docstring the API reference is generated from:
functions say their ``Args:`` and ``Returns:``; classes document their constructor's ``Args:`` (dataclasses their
``Attributes:``), and explainers their ``__call__``'s ``Args:`` and ``Returns:``."""

from __future__ import annotations

import dataclasses
import inspect

import camlens


def _has(doc: str | None, *sections: str) -> bool:
    lines = {line.strip() for line in (doc or "").splitlines()}
    return all(f"{s}:" in lines for s in sections)


def _own(cls: type, name: str) -> tuple[type, object] | None:
    """The class of camlens that defines ``cls.name`` and the attribute, or None when it comes from elsewhere."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return (klass, vars(klass)[name]) if klass.__module__.startswith("camlens") else None
    return None


def missing_sections(obj: object, name: str) -> list[str]:
    """What ``obj`` (a public name) lacks, one line each."""
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj):
            return [] if _has(obj.__doc__, "Attributes") else [f"{name}: dataclass docstring without Attributes:"]
        problems = []
        init = _own(obj, "__init__")
        if init is not None and len(inspect.signature(obj).parameters) > 0:
            owner, fn = init
            if not (_has(obj.__doc__, "Args") or _has(owner.__doc__, "Args") or _has(fn.__doc__, "Args")):
                problems.append(f"{name}: constructor without Args: (class or __init__ docstring)")
        call = _own(obj, "__call__")
        if call is not None and not _has(call[1].__doc__, "Args", "Returns"):
            problems.append(f"{name}.__call__ (from {call[0].__name__}): docstring without Args: and Returns:")
        return problems
    if callable(obj):
        needs = ("Args", "Returns") if inspect.signature(obj).parameters else ("Returns",)
        return [] if _has(obj.__doc__, *needs) else [f"{name}: docstring without {' and '.join(needs)}:"]
    return []


def test_every_public_name_has_args_and_returns():
    problems = [p for name in camlens.__all__ for p in missing_sections(getattr(camlens, name), name)]
    assert not problems, "public names without Google-style sections:\n" + "\n".join(problems)


def test_the_check_catches_a_function_and_an_explainer_call_without_sections():
    def documented(x: int) -> int:
        """Double.

        Args:
            x: a number.

        Returns:
            2x.
        """
        return 2 * x

    def bare(x: int) -> int:
        """Double."""
        return 2 * x

    class Bare(camlens.CAM):
        def __call__(self, x, classes=None, *, topk=1):
            """No sections."""
            return super().__call__(x, classes, topk=topk)

    Bare.__module__ = "camlens.fake"
    assert missing_sections(documented, "documented") == []
    assert missing_sections(bare, "bare") == ["bare: docstring without Args and Returns:"]
    assert missing_sections(Bare, "Bare") == ["Bare.__call__ (from Bare): docstring without Args: and Returns:"]
