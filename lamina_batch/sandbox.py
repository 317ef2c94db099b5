"""The Jinja environment every pipeline template runs in: the immutable sandbox with StrictUndefined, caps on the
operations that can allocate or loop without bound, and a per-render budget of work and output.

A render may do at most MAX_STEPS loop iterations and calls, write at most MAX_WRITTEN_CHARS through every output
buffer (macros, `{% set %}` blocks and filter blocks included), and no single operation may build a value longer
than MAX_VALUE_CHARS or format a field wider than MAX_RENDERED_CHARS. So nested `range()` loops, exponential
macros, `'{:>3000000000}'.format(x)` and `'%999999999s' % x` stop with one clear line instead of spinning or
allocating gigabytes. Templates are parsed, guarded (loops, outputs and `~` routed through the budget) and
compiled here; `templates.py` builds on this.
"""

from __future__ import annotations

import contextvars
import difflib
import re
import string
import types
from collections.abc import Callable, Collection, Iterable, Iterator
from functools import update_wrapper
from typing import Any

import jinja2
import jinja2.filters
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.visitor import NodeTransformer

MAX_RENDERED_CHARS = 100_000  # the rendered value of one template (an input, a download path)
MAX_VALUE_CHARS = 1_000_000  # any one string or list built on the way there
MAX_WRITTEN_CHARS = 1_000_000  # everything a render writes through output buffers, macros and blocks included
MAX_STEPS = 200_000  # loop iterations and calls in one render (one full `range(100000)` loop fits)
_MAX_POW_EXPONENT = 1_000  # `**` on big ints is the cheapest way to burn CPU and memory from a template
_MAX_INT_BITS = 100_000
_MAX_INDENT = 100

__all__ = [
    "ENV",
    "MAX_RENDERED_CHARS",
    "MAX_STEPS",
    "MAX_VALUE_CHARS",
    "MAX_WRITTEN_CHARS",
    "Budget",
    "Namespace",
    "TemplateTooComplex",
    "did_you_mean",
    "guard",
    "new_budget",
]


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A `did you mean 'x'?` hint for a misspelt name, or None when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


class Namespace(dict[str, Any]):
    """A dict whose keys win over dict methods in templates (a column named `items` must mean the column) and
    whose missing keys produce a message naming what exists, e.g. `no column 'nme' (did you mean 'name'?)`."""

    __slots__ = ("_kind",)

    def __init__(self, kind: str, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._kind = kind

    def missing_message(self, name: object) -> str:
        names = [str(k) for k in self]
        text = f"no {self._kind} {name!r}"
        hint = did_you_mean(str(name), names)
        listing = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
        extra = [hint] if hint else []
        extra.append(f"{self._kind}s: {listing}" if names else f"there are no {self._kind}s")
        return f"{text} ({'; '.join(extra)})"


class _Undefined(jinja2.StrictUndefined):
    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        obj = self._undefined_obj
        if isinstance(obj, Namespace):
            return obj.missing_message(self._undefined_name)
        return str(super()._undefined_message)


# --------------------------------------------------------------------------- the per-render budget


class TemplateTooComplex(SecurityError):
    """A render went over its budget of steps or written characters."""


class Budget:
    """What one render may still do; counted by the guarded loops, calls and outputs."""

    __slots__ = ("steps", "written")

    def __init__(self) -> None:
        self.steps = 0
        self.written = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateTooComplex(f"more than {MAX_STEPS} loop iterations and calls in one render")

    def write(self, value: Any) -> str:
        text = value if value.__class__ is str else str(value)
        self.written += len(text)
        if self.written > MAX_WRITTEN_CHARS:
            raise TemplateTooComplex(f"writes more than {MAX_WRITTEN_CHARS} characters in one render")
        return text


_CURRENT: contextvars.ContextVar[Budget] = contextvars.ContextVar("lamina_batch_template_budget")


def new_budget() -> contextvars.Token[Budget]:
    """Start a render's budget (reset it with `_CURRENT.reset(token)` via `end_budget`)."""
    return _CURRENT.set(Budget())


def end_budget(token: contextvars.Token[Budget]) -> None:
    _CURRENT.reset(token)


def _budget() -> Budget:
    # outside render()/evaluate() (a template driven by hand) each loop and call gets a budget of its own
    return _CURRENT.get(None) or Budget()


def _loop(iterable: Any) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.step()
        yield item


def _out(value: Any) -> str:
    return _budget().write(value)


def _concat(*parts: Any) -> str:
    texts = [p if p.__class__ is str else str(p) for p in parts]
    _check_size(sum(len(t) for t in texts), "joined text")
    return "".join(texts)


_GUARDS: dict[str, Callable[..., Any]] = {"_lb_loop": _loop, "_lb_out": _out, "_lb_concat": _concat}
_UNCOUNTED = frozenset(_GUARDS.values())


class _Guard(NodeTransformer):
    """Routes every loop, every piece of output and every `~` through the budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _call("_lb_loop", [node.iter], node.lineno)  # type: ignore[list-item]  # For.iter is an Expr
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        wrapped: list[nodes.Expr] = []
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                child = nodes.Const(child.data, lineno=child.lineno)
            wrapped.append(_call("_lb_out", [child], child.lineno))
        node.nodes = wrapped
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _call("_lb_concat", list(node.nodes), node.lineno)


def _call(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    return nodes.Call(nodes.Name(name, "load", lineno=lineno), args, [], None, None, lineno=lineno)


def guard(tree: nodes.Template) -> nodes.Template:
    """The same template with loops, outputs and `~` counted against the render's budget (modified in place)."""
    _Guard().visit(tree)
    return tree


# --------------------------------------------------------------------------- size checks


def _check_size(size: int, what: str, cap: int = MAX_VALUE_CHARS) -> None:
    if size > cap:
        raise SecurityError(f"{what} would be longer than {cap} characters")


_NUMBER = re.compile(r"\d+")
# printf-style conversions: optional mapping key, flags, width, precision
_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_format_spec(spec: str) -> None:
    """`{:>3000000000}`: any width or precision in a format spec above the output cap is refused."""
    for number in _NUMBER.findall(spec):
        if len(number) > 6 or int(number) > MAX_RENDERED_CHARS:
            raise SecurityError(f"format width {number} is larger than {MAX_RENDERED_CHARS}")


def _check_percent(fmt: str) -> None:
    """`'%999999999s' % x`: widths and precisions above the output cap, and `*` widths, are refused."""
    for width, precision in _PERCENT.findall(fmt):
        for number in (width, precision):
            if number == "*":
                raise SecurityError("'*' widths are not allowed in templates")
            if number and (len(number) > 6 or int(number) > MAX_RENDERED_CHARS):
                raise SecurityError(f"format width {number} is larger than {MAX_RENDERED_CHARS}")


class _CappedFormatter(SandboxedFormatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        _check_format_spec(format_spec)
        return super().format_field(value, format_spec)


def _length(value: Any) -> int | None:
    return len(value) if isinstance(value, str | list | tuple) else None


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_RENDERED_CHARS:
                raise SecurityError(f"repetition result is longer than {MAX_RENDERED_CHARS} items")
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > _MAX_INT_BITS:
            raise SecurityError(f"product larger than {_MAX_INT_BITS} bits")
    elif operator == "**" and isinstance(right, int | float) and abs(right) > _MAX_POW_EXPONENT:
        raise SecurityError(f"exponent larger than {_MAX_POW_EXPONENT}")
    elif operator == "+":
        a, b = _length(left), _length(right)
        if a is not None and b is not None:
            _check_size(a + b, "sum")
    elif operator == "%" and isinstance(left, str):
        _check_percent(left)


_WIDTH_METHODS = frozenset({"ljust", "rjust", "center", "zfill"})


def _checked_str_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The arguments for a str method call, after checking the widths of `ljust`/`rjust`/`center`/`zfill` and
    the result size of `replace`, `join` and `expandtabs` (`join`'s iterable is listed first, so a generator
    is measured before it is joined)."""
    name = getattr(obj, "__name__", "")
    owner = getattr(obj, "__self__", None)
    if not isinstance(owner, str) or not isinstance(obj, types.BuiltinMethodType):
        return args
    if name in _WIDTH_METHODS and args and isinstance(args[0], int):
        _check_size(args[0], f"{name}()", MAX_RENDERED_CHARS)
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            _check_size(owner.count("\t") * size + len(owner), "expandtabs()")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _check_size(_replaced_size(owner, args[0], args[1]), "replace()")
    elif name == "join" and len(args) == 1:
        items = list(_loop(args[0]))
        _check_size(
            sum(len(x) if isinstance(x, str) else 0 for x in items) + len(owner) * max(len(items) - 1, 0), "join()"
        )
        return (items,)
    return args


def _replaced_size(text: str, old: str, new: str) -> int:
    hits = text.count(old) if old else len(text) + 1
    return len(text) + hits * (len(new) - len(old))


# --------------------------------------------------------------------------- capped filters


def _capped_center(value: Any, width: int = 80) -> str:
    return str(value).center(min(int(width), MAX_RENDERED_CHARS))


def _capped_indent(value: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    if (isinstance(width, str) and len(width) > _MAX_INDENT) or (isinstance(width, int) and width > _MAX_INDENT):
        raise SecurityError(f"indent wider than {_MAX_INDENT}")
    return str(jinja2.filters.do_indent(str(value), width, first, blank))


def _capped_format(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_percent(str(value))
    return str(jinja2.filters.do_format(value, *args, **kwargs))


@jinja2.pass_eval_context
def _capped_replace(
    eval_ctx: jinja2.nodes.EvalContext, value: Any, old: Any, new: Any, count: int | None = None
) -> str:
    text, o, n = str(value), str(old), str(new)
    _check_size(_replaced_size(text, o, n), "replace")
    return str(jinja2.filters.do_replace(eval_ctx, text, o, n, count))


@jinja2.pass_eval_context
def _capped_join(
    eval_ctx: jinja2.nodes.EvalContext, value: Iterable[Any], d: str = "", attribute: str | int | None = None
) -> str:
    items = list(value)
    if attribute is None:
        _check_size(sum(len(str(x)) for x in items) + len(str(d)) * max(len(items) - 1, 0), "join")
    return str(jinja2.filters.sync_do_join(eval_ctx, items, d, attribute))


@jinja2.pass_environment
def _capped_wordwrap(
    environment: jinja2.Environment,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    glue = wrapstring if wrapstring is not None else environment.newline_sequence
    _check_size(len(s) + len(glue) * (len(s) // max(int(width), 1) + 1), "wordwrap")
    return str(jinja2.filters.do_wordwrap(environment, s, width, break_long_words, wrapstring, break_on_hyphens))


def _capped_batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Iterator[list[Any]]:
    _check_size(int(linecount), "batch", MAX_RENDERED_CHARS)
    return jinja2.filters.do_batch(value, linecount, fill_with)


def _capped_slice(value: Collection[Any], slices: int, fill_with: Any = None) -> Iterator[list[Any]]:
    _check_size(int(slices), "slice", MAX_RENDERED_CHARS)
    return jinja2.filters.sync_do_slice(value, slices, fill_with)


# --------------------------------------------------------------------------- the environment


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus caps on the operators, methods and calls that can allocate or loop."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is Namespace and attribute in obj:
            return obj[attribute]
        if type(obj) is Namespace and not hasattr(dict, attribute):
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if type(obj) is Namespace and isinstance(argument, str):
            if argument in obj:
                return obj[argument]
            return self.undefined(obj=obj, name=argument)
        return super().getitem(obj, argument)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if __obj in _UNCOUNTED:  # our own guards: Jinja passes them its loop/block bookkeeping, as to any call
            return __obj(*args)
        _budget().step()
        return super().call(__context, __obj, *_checked_str_call(__obj, args, kwargs), **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format`/`format_map` with every field's width and precision checked before it is formatted."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        formatter: string.Formatter = _CappedFormatter(self)
        is_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                return str(formatter.vformat(owner, (), args[0]))
            return str(formatter.vformat(owner, args, kwargs))

        return update_wrapper(wrapper, value)


def _make_env() -> _Sandbox:
    env = _Sandbox(undefined=_Undefined, autoescape=False, keep_trailing_newline=True)
    env.filters["center"] = _capped_center
    env.filters["indent"] = _capped_indent
    env.filters["format"] = _capped_format
    env.filters["replace"] = _capped_replace
    env.filters["join"] = _capped_join
    env.filters["wordwrap"] = _capped_wordwrap
    env.filters["batch"] = _capped_batch
    env.filters["slice"] = _capped_slice
    env.globals.update(_GUARDS)
    del env.globals["lipsum"]  # `lipsum(n=10**6)` builds megabytes of filler text in one call
    return env


ENV = _make_env()
