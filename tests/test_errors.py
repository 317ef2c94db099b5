"""errors.py: the tree drawn in its docstring is the real class tree, and a failed refresh is fatal, not retryable."""

from __future__ import annotations

import inspect
import re

from lamina_batch import errors


def _drawn_tree() -> dict[str, str | None]:
    """Class name -> parent name, read from the docstring's drawing (indentation gives the parent)."""
    assert errors.__doc__ is not None
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in errors.__doc__.splitlines():
        m = re.match(r"^(\s*(?:[|+]\s*|--\s*)*)(\w+Error)\b", line)
        if m is None:
            continue
        depth = len(m.group(1))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[m.group(2)] = stack[-1][1] if stack else None
        stack.append((depth, m.group(2)))
    return parents


def test_docstring_tree_is_the_class_tree() -> None:
    """Every exception class of errors.py is drawn once, under its real base class."""
    drawn = _drawn_tree()
    defined = {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__ == errors.__name__
    }
    assert set(drawn) == set(defined)
    for name, parent in drawn.items():
        base = defined[name].__bases__[0]
        assert (base.__name__ if parent is not None else "Exception") == (parent or "Exception"), name


def test_login_refresh_error_is_fatal_and_says_what_to_do() -> None:
    """LoginRefreshError is an AuthError (stops the batch), never transient, and ends with its advice."""
    exc = errors.LoginRefreshError("the server refused it", status=400, code="invalid_grant")
    assert isinstance(exc, errors.AuthError)
    assert isinstance(exc, errors.BatchFatalError)
    assert not isinstance(exc, errors.TransientError)
    assert str(exc) == (
        "the server refused it [HTTP 400, invalid_grant]: run `lamina login` again (or set LAMINA_API_KEY)"
    )
    assert str(errors.LoginRefreshError("x", advice="do y")) == "x: do y"
