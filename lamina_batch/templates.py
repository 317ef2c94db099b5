"""Pipeline templates on the sandbox of `sandbox.py`: compile caches, the fast path for plain lookups, rendering
with the output cap, the `slug` filter, static reference analysis (which columns / axes / steps a template names),
plan-time placeholders and download paths.
"""

from __future__ import annotations

import functools
import operator
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser

from lamina_batch.errors import Problem, TemplateError
from lamina_batch.models import Pipeline, PlannedRun, RunOutput
from lamina_batch.sandbox import (
    ENV,
    MAX_RENDERED_CHARS,
    Namespace,
    TemplateTooComplex,
    did_you_mean,
    end_budget,
    guard,
    new_budget,
)

MAX_TEMPLATE_CHARS = 10_000

__all__ = [
    "ENV",
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


_SLUG_DROP = re.compile(r"[^a-z0-9]+")


def slug(value: Any) -> str:
    """Lowercase ASCII words joined by '-': `1:1` -> `1-1`, `Crème Brûlée` -> `creme-brulee`."""
    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode("ascii").lower()
    return _SLUG_DROP.sub("-", text).strip("-")


ENV.filters["slug"] = slug


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


_TOO_DEEP = "template nests brackets, filters or blocks too deeply to read; split it up or use fewer nested brackets"


def _parse(source: str) -> nodes.Template:
    """Parse with every failure as a TemplateError (a syntax error, or nesting deeper than Python's recursion)."""
    try:
        return ENV.parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(_syntax_message(e)) from None
    except RecursionError:
        raise TemplateError(_TOO_DEEP) from None


def _compile(tree: nodes.Template) -> jinja2.Template:
    """The guarded, compiled template (Python's own compiler has nesting limits too: 200 brackets)."""
    try:
        return ENV.from_string(guard(tree))
    except (RecursionError, SyntaxError, MemoryError):
        raise TemplateError(_TOO_DEEP) from None


@functools.lru_cache(maxsize=4096)
def compile_template(source: str) -> CompiledTemplate:
    """Parse once and cache; raises TemplateError (message only, callers add the location)."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"template is {len(source)} characters, the limit is {MAX_TEMPLATE_CHARS}")
    tree = _parse(source)
    parts = _simple_parts(tree)  # before guard() rewrites the tree
    return CompiledTemplate(source, _compile(tree), parts)


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
        tree = _closure(expr) if _is_simple(expr) else None
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(_syntax_message(e)) from None
    except RecursionError:
        raise TemplateError(_TOO_DEEP) from None
    body = nodes.Template([nodes.Assign(nodes.Name("result", "store"), expr, lineno=1)], lineno=1)
    body.set_environment(ENV)
    return CompiledExpression(source, _compile(body), tree)


def _syntax_message(e: jinja2.TemplateSyntaxError) -> str:
    where = f" (template line {e.lineno})" if e.lineno and e.lineno > 1 else ""
    return f"template syntax error: {e.message}{where}"


def _failure(e: Exception) -> TemplateError:
    if isinstance(e, jinja2.UndefinedError):
        return TemplateError(str(e.message))
    if isinstance(e, TemplateTooComplex):
        return TemplateError(f"template does too much: {e}")
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
    token = new_budget()
    try:
        # the output is checked chunk by chunk as it is produced, so a long render stops at the cap
        for chunk in template.template.root_render_func(_new_context(template.template, context)):
            size += len(chunk)
            if size > MAX_RENDERED_CHARS:
                raise TemplateError(f"rendered value is longer than {MAX_RENDERED_CHARS} characters")
            parts.append(chunk)
    except TemplateError:
        raise
    except Exception as e:  # the template is user code: any failure of it is a user error, not ours
        raise _failure(e) from None
    finally:
        end_budget(token)
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
    token = new_budget()
    try:
        for _ in expression.template.root_render_func(ctx):
            pass
    except Exception as e:  # user code, as in render()
        raise _failure(e) from None
    finally:
        end_budget(token)
    return ctx.vars["result"]


# --------------------------------------------------------------------------- static analysis


def referenced(source: str, name: str) -> set[str]:
    """Attribute names used on the top-level variable `name`: `{{ steps.hero.output }}` -> {'hero'} for
    'steps'. Constant subscripts (`row['Product Name']`) count too. Raises TemplateError on a syntax error."""
    try:
        return _referenced_in(_parse(source), name)
    except RecursionError:
        raise TemplateError(_TOO_DEEP) from None


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
        return any(n.name == name and n.ctx == "load" for n in _parse(source).find_all(nodes.Name))
    except RecursionError:
        raise TemplateError(_TOO_DEEP) from None


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
    *,
    attempt: int = 1,
) -> str:
    """Render `download.path` for one output of one run (not yet checked for escapes: downloads does that).
    `attempt` lets a redo write beside the earlier attempt's files (`{{ attempt }}` in the path)."""
    if pipeline.download is None:
        raise TemplateError(Problem("the pipeline has no download: block", file=str(pipeline.path)))
    step = pipeline.step(run.step_id)
    context = {
        "row": row_context(run.item.row),
        "row_number": run.item.row_number,
        "attempt": attempt,
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
                line=pipeline.download.line,
                path=f"download.path (row {run.item.row_number}, step {run.step_id!r})",
            )
        ) from None
