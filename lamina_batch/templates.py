"""The Jinja sandbox every pipeline template runs in: immutable, StrictUndefined, size caps, the `slug` filter,
a compile cache, static reference analysis (which columns / axes / steps a template names) and download paths.
"""

from __future__ import annotations

import difflib
import functools
import operator
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lamina_batch.errors import Problem, TemplateError
from lamina_batch.models import Pipeline, PlannedRun, RunOutput

MAX_TEMPLATE_CHARS = 10_000
MAX_RENDERED_CHARS = 100_000
# `**` on big ints is the cheapest way to burn CPU and memory from a template.
_MAX_POW_EXPONENT = 1_000

__all__ = [
    "MAX_RENDERED_CHARS",
    "MAX_TEMPLATE_CHARS",
    "CompiledExpression",
    "CompiledTemplate",
    "Namespace",
    "compile_expression",
    "compile_template",
    "did_you_mean",
    "is_template",
    "referenced",
    "render",
    "render_download_path",
    "slug",
    "steps_context",
    "upstream_placeholder",
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


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus caps on the operators that can allocate without bound."""

    intercepted_binops = frozenset({"*", "**"})

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
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_RENDERED_CHARS:
                    raise SecurityError(f"repetition result is longer than {MAX_RENDERED_CHARS} items")
        if operator == "**" and isinstance(right, int | float) and abs(right) > _MAX_POW_EXPONENT:
            raise SecurityError(f"exponent larger than {_MAX_POW_EXPONENT}")
        return super().call_binop(context, operator, left, right)


_SLUG_DROP = re.compile(r"[^a-z0-9]+")


def slug(value: Any) -> str:
    """Lowercase ASCII words joined by '-': `1:1` -> `1-1`, `Crème Brûlée` -> `creme-brulee`."""
    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode("ascii").lower()
    return _SLUG_DROP.sub("-", text).strip("-")


def _capped_center(value: Any, width: int = 80) -> str:
    return str(value).center(min(int(width), MAX_RENDERED_CHARS))


def _capped_indent(value: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    if (isinstance(width, str) and len(width) > 100) or (isinstance(width, int) and width > 100):
        raise SecurityError("indent wider than 100")
    return str(jinja2.filters.do_indent(str(value), width, first, blank))


def _make_env() -> _Sandbox:
    env = _Sandbox(undefined=_Undefined, autoescape=False, keep_trailing_newline=True)
    env.filters["slug"] = slug
    env.filters["center"] = _capped_center
    env.filters["indent"] = _capped_indent
    return env


ENV = _make_env()


def is_template(value: object) -> bool:
    """True for strings that need Jinja; plain strings and literals are used as they are (and cost nothing)."""
    return isinstance(value, str) and ("{" in value)


Lookup = tuple[str, tuple[tuple[bool, Any], ...]]  # root name, then (is_subscript, attribute or key) steps


class CompiledTemplate:
    """A parsed template. Templates that are only text and lookups (`Photo of {{ row.name }}`), the usual
    case, also get `parts`, rendered without building a Jinja context (planning 100k rows must be fast);
    the lookups go through the same sandbox getattr/getitem and StrictUndefined as Jinja would use."""

    __slots__ = ("parts", "source", "template")

    def __init__(self, source: str, template: jinja2.Template, parts: tuple[str | Lookup, ...] | None) -> None:
        self.source = source
        self.template = template
        self.parts = parts


def _lookup(node: nodes.Node) -> Lookup | None:
    path: list[tuple[bool, Any]] = []
    while True:
        if isinstance(node, nodes.Name) and node.ctx == "load":
            return node.name, tuple(reversed(path))
        if isinstance(node, nodes.Getattr):
            path.append((False, node.attr))
            node = node.node
        elif (
            isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and type(node.arg.value) in (str, int)
        ):
            path.append((True, node.arg.value))
            node = node.node
        else:
            return None


def _simple_parts(tree: nodes.Template) -> tuple[str | Lookup, ...] | None:
    parts: list[str | Lookup] = []
    for stmt in tree.body:
        if not isinstance(stmt, nodes.Output):
            return None
        for node in stmt.nodes:
            if isinstance(node, nodes.TemplateData):
                parts.append(node.data)
                continue
            lookup = _lookup(node)
            if lookup is None:
                return None
            parts.append(lookup)
    return tuple(parts)


@functools.lru_cache(maxsize=4096)
def compile_template(source: str) -> CompiledTemplate:
    """Parse once and cache; raises TemplateError (message only, callers add the location)."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"template is {len(source)} characters, the limit is {MAX_TEMPLATE_CHARS}")
    try:
        tree = ENV.parse(source)
        template = ENV.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(_syntax_message(e)) from None
    return CompiledTemplate(source, template, _simple_parts(tree))


class CompiledExpression:
    """A compiled Jinja expression (e.g. `where`). Simple ones (lookups, constants, comparisons, and/or/not)
    also get `tree`, evaluated directly with Jinja's semantics instead of through a Jinja context."""

    __slots__ = ("source", "template", "tree")

    def __init__(self, source: str, template: jinja2.Template, tree: Callable[[Mapping[str, Any]], Any] | None) -> None:
        self.source = source
        self.template = template
        self.tree = tree


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "lteq": operator.le,
    "gt": operator.gt,
    "gteq": operator.ge,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}


def _is_simple(node: nodes.Node) -> bool:
    if isinstance(node, nodes.Const):
        return True
    if isinstance(node, nodes.And | nodes.Or):
        return _is_simple(node.left) and _is_simple(node.right)
    if isinstance(node, nodes.Not):
        return _is_simple(node.node)
    if isinstance(node, nodes.Compare):
        return _is_simple(node.expr) and all(o.op in _COMPARE and _is_simple(o.expr) for o in node.ops)
    return _lookup(node) is not None


def _closure(node: nodes.Node) -> Callable[[Mapping[str, Any]], Any]:
    """A simple expression as nested Python closures, built once (with Jinja's semantics: `and`/`or`
    return an operand, comparisons chain, StrictUndefined raises on use)."""
    if isinstance(node, nodes.Const):
        value = node.value
        return lambda c: value
    if isinstance(node, nodes.And):
        left, right = _closure(node.left), _closure(node.right)
        return lambda c: left(c) and right(c)
    if isinstance(node, nodes.Or):
        left, right = _closure(node.left), _closure(node.right)
        return lambda c: left(c) or right(c)
    if isinstance(node, nodes.Not):
        inner = _closure(node.node)
        return lambda c: not inner(c)
    if isinstance(node, nodes.Compare):
        first = _closure(node.expr)
        ops = [(_COMPARE[o.op], _closure(o.expr)) for o in node.ops]

        def compare(c: Mapping[str, Any]) -> bool:
            left = first(c)
            for op, get in ops:
                right = get(c)
                if not op(left, right):
                    return False
                left = right
            return True

        return compare
    lookup = _lookup(node)
    assert lookup is not None  # _is_simple admitted only these
    return lambda c: _resolve(lookup, c)


@functools.lru_cache(maxsize=256)
def compile_expression(source: str) -> CompiledExpression:
    """Compile a `where`-style Jinja expression; raises TemplateError on a syntax error."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"expression is {len(source)} characters, the limit is {MAX_TEMPLATE_CHARS}")
    try:
        # what Environment.compile_expression does, keeping the Template so evaluate() can skip its
        # per-call ChainMap copy of the globals
        parser = Parser(ENV, source, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            raise jinja2.TemplateSyntaxError("chunk after expression", parser.stream.current.lineno, None, None)
        expr.set_environment(ENV)
        body = [nodes.Assign(nodes.Name("result", "store"), expr, lineno=1)]
        template = ENV.from_string(nodes.Template(body, lineno=1))
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(_syntax_message(e)) from None
    return CompiledExpression(source, template, _closure(expr) if _is_simple(expr) else None)


def _syntax_message(e: jinja2.TemplateSyntaxError) -> str:
    where = f" (template line {e.lineno})" if e.lineno and e.lineno > 1 else ""
    return f"template syntax error: {e.message}{where}"


def _failure(e: Exception) -> TemplateError:
    if isinstance(e, jinja2.UndefinedError):
        return TemplateError(str(e.message))
    if isinstance(e, SecurityError):
        return TemplateError(f"not allowed in a template: {e}")
    if isinstance(e, jinja2.TemplateError):
        return TemplateError(f"template error: {e}")
    if isinstance(e, RecursionError):
        return TemplateError("template recursion too deep")
    return TemplateError(f"{type(e).__name__}: {e}")


# Jinja's Template.new_context copies a ChainMap of the globals on every call, which dominated planning
# 100k rows; a flat copy made once and shared contexts do the same job.
_GLOBALS: dict[str, Any] = dict(ENV.globals)


def _new_context(template: jinja2.Template, context: Mapping[str, Any]) -> jinja2.runtime.Context:
    return template.new_context({**_GLOBALS, **context}, shared=True)


def render(template: CompiledTemplate, context: Mapping[str, Any]) -> str:
    """Render with the output cap; every failure (undefined name, sandbox, runtime) becomes TemplateError."""
    if template.parts is not None:
        try:
            text = "".join([p if p.__class__ is str else str(_resolve(p, context)) for p in template.parts])  # type: ignore[arg-type]
        except Exception as e:  # user code, as below
            raise _failure(e) from None
        if len(text) > MAX_RENDERED_CHARS:
            raise TemplateError(f"rendered value is longer than {MAX_RENDERED_CHARS} characters")
        return text
    size = 0
    parts: list[str] = []
    try:
        for chunk in template.template.root_render_func(_new_context(template.template, context)):
            size += len(chunk)
            if size > MAX_RENDERED_CHARS:
                raise TemplateError(f"rendered value is longer than {MAX_RENDERED_CHARS} characters")
            parts.append(chunk)
    except TemplateError:
        raise
    except Exception as e:  # the template is user code: any failure of it is a user error, not ours
        raise _failure(e) from None
    return "".join(parts)


def _resolve(lookup: Lookup, context: Mapping[str, Any]) -> Any:
    root, path = lookup
    if root in context:
        value = context[root]
    elif root in _GLOBALS:
        value = _GLOBALS[root]
    else:
        value = ENV.undefined(name=root)
    for subscript, name in path:
        if value.__class__ is Namespace and name in value:
            value = value[name]  # the common case, without the sandbox's generic attribute checks
        else:
            value = ENV.getitem(value, name) if subscript else ENV.getattr(value, name)
    return value


def evaluate(expression: CompiledExpression, context: Mapping[str, Any]) -> Any:
    """Evaluate a compiled expression; every failure becomes TemplateError."""
    if expression.tree is not None:
        try:
            return expression.tree(context)
        except Exception as e:  # user code, as in render()
            raise _failure(e) from None
    ctx = _new_context(expression.template, context)
    try:
        for _ in expression.template.root_render_func(ctx):
            pass
    except Exception as e:  # user code, as in render()
        raise _failure(e) from None
    return ctx.vars["result"]


# --------------------------------------------------------------------------- static analysis


def referenced(source: str, name: str) -> set[str]:
    """Attribute names used on the top-level variable `name`: `{{ steps.hero.output }}` -> {'hero'} for
    'steps'. Constant subscripts (`row['Product Name']`) count too. Raises TemplateError on a syntax error."""
    try:
        tree = ENV.parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(_syntax_message(e)) from None
    return _referenced_in(tree, name)


def referenced_in_expression(source: str, name: str) -> set[str]:
    """`referenced` for a bare expression such as `where`."""
    return referenced("{{ " + source + " }}", name)


def _referenced_in(tree: nodes.Node, name: str) -> set[str]:
    found: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            if isinstance(node.node, nodes.Name) and node.node.name == name:
                found.add(node.attr)
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.node, nodes.Name)
            and node.node.name == name
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            found.add(node.arg.value)
    return found


def uses_name(source: str, name: str) -> bool:
    """True if the template loads the top-level variable `name` at all."""
    try:
        tree = ENV.parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(_syntax_message(e)) from None
    return any(n.name == name and n.ctx == "load" for n in tree.find_all(nodes.Name))


# --------------------------------------------------------------------------- context helpers


UPSTREAM_MARKER = "<lamina-batch:upstream:"


def upstream_placeholder(identity: str, index: int | None = None) -> str:
    """What `steps.X.output` renders to at plan time: derived from X's identity, so a downstream identity
    changes exactly when its upstream run changes."""
    if index is None:
        return f"{UPSTREAM_MARKER}{identity}>"
    return f"{UPSTREAM_MARKER}{identity}:{index}>"


class _PlaceholderOutputs(list[Namespace]):
    """`steps.X.outputs` at plan time: any index yields a placeholder entry, so templates that pick the
    second output plan fine before the real outputs exist."""

    __slots__ = ("_identity",)

    def __init__(self, identity: str, labels: Sequence[str] | None) -> None:
        self._identity = identity
        super().__init__(_placeholder_output(identity, i, label) for i, label in enumerate(labels or [None]))

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, int) and index >= len(self):
            return _placeholder_output(self._identity, index, None)
        return super().__getitem__(index)


def _placeholder_output(identity: str, index: int, label: str | None) -> Namespace:
    value = upstream_placeholder(identity, index)
    return Namespace(
        "output field",
        id=value,
        label=label if label is not None else value,
        type="<lamina-batch:upstream-type>",
        value=value if index else upstream_placeholder(identity),
    )


def placeholder_step(identity: str, labels: Sequence[str] | None, with_outputs: bool = True) -> Namespace:
    """The plan-time `steps.X` entry (`with_outputs=False` leaves out `.outputs` when nothing reads it)."""
    step = Namespace("step field", output=upstream_placeholder(identity))
    if with_outputs:
        step["outputs"] = _PlaceholderOutputs(identity, labels)
    return step


def steps_context(upstream: Mapping[str, Sequence[RunOutput]]) -> Namespace:
    """`steps` with real outputs: `.output` is the first output's value, `.outputs` a list of
    `{id, label, type, value}`."""
    steps = Namespace("upstream step")
    for step_id, outputs in upstream.items():
        listed = [Namespace("output field", id=o.id, label=o.label, type=o.type, value=o.value) for o in outputs]
        steps[step_id] = Namespace("step field", output=outputs[0].value if outputs else None, outputs=listed)
    return steps


def row_context(row: Mapping[str, str]) -> Namespace:
    return Namespace("column", row)


def axes_context(axes: Mapping[str, str]) -> Namespace:
    return Namespace("axis", axes)


# --------------------------------------------------------------------------- download paths


def render_download_path(
    pipeline: Pipeline,
    run: PlannedRun,
    output: RunOutput,
    index: int,
    ext: str,
    upstream: Mapping[str, Sequence[RunOutput]],
) -> str:
    """Render `download.path` for one output of one run (not yet checked for escapes: downloads does that)."""
    if pipeline.download is None:
        raise TemplateError(Problem("the pipeline has no download: block", file=str(pipeline.path)))
    step = pipeline.step(run.step_id)
    context = {
        "row": row_context(run.item.row),
        "row_number": run.item.row_number,
        "axes": axes_context(run.item.axes),
        "steps": steps_context(upstream),
        "step": Namespace("step field", id=step.id, app=step.app),
        "output": Namespace(
            "output field",
            id=output.id,
            label=output.label,
            index=index,
            ext=ext,
            type=output.type,
            value=output.value,
        ),
    }
    try:
        return render(compile_template(pipeline.download.path), context)
    except TemplateError as e:
        raise TemplateError(
            Problem(
                e.problems[0].message,
                file=str(pipeline.path),
                path=f"download.path (row {run.item.row_number}, step {run.step_id!r})",
            )
        ) from None
