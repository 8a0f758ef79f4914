"""Compiled walkers for the shapes of ``data`` a log repeats: the metrics table's fast path.

A training log says the same thing a million times: ``batch_metrics`` with the
same seven keys, ``epoch_end`` with the same metrics. For each distinct key
tuple of a dict, :class:`PlanCompiler` generates a small Python function that
reads those keys directly, checks that every value has the type it had the
first time (one ``type(v) is T`` per key), and then appends the values and
their interned metric codes in a few C-level ``extend`` calls, in key order.
When a check fails (a loss that is an int this time, a null recall) the
function returns :data:`MISS` before appending anything and the caller takes
the general walk, which gives the same rows. So a plan only ever makes the
common case faster; the naming rules live in one place, :mod:`replay.tables`.

The generated source holds no text from the log except dict keys written
with :func:`repr` (always a valid literal), metric codes and fixed names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["EPOCH_KEYS", "MAX_KEYS", "MAX_PLANS", "MISS", "ROUND_KEYS", "STEP_KEYS", "PlanCompiler"]

#: Returned by a plan whose type checks failed; nothing was appended.
MISS = object()
#: Dicts with more keys than this are walked in general (no code for huge dicts).
MAX_KEYS = 64
#: Plans per level; beyond it new shapes are walked in general (logs with ever-new keys).
MAX_PLANS = 512

_NONE = type(None)

# Index columns: the keys they come from, in order of preference (replay.tables._message_row).
EPOCH_KEYS = ("epoch", "local_epoch")
STEP_KEYS = ("step",)
ROUND_KEYS = ("round", "round_num")


class PlanCompiler:
    """Generates plans for one metrics builder (its codes, lists and nodes).

    Args:
        register: ``(node, key) -> code`` (``-1`` for an index key at the root).
        child: ``(node, key) -> node`` one level down.
        root: the root node (``data`` and ``data.metrics`` share it).
        env: names the generated code calls: ``ve``/``ce`` (extend values /
            codes), ``va``/``ca`` (append), ``nf`` (non-finite lookup),
            ``walk`` (planned walk of a nested dict), ``walk_list``, ``index``
            and ``client_text`` (the row rules of :mod:`replay.tables`).
    """

    def __init__(
        self,
        register: Callable[[Any, Any], int],
        child: Callable[[Any, Any], Any],
        root: Any,
        env: dict[str, Any],
    ) -> None:
        self.register = register
        self.child = child
        self.root = root
        self.env = env

    def _body(
        self, mapping: dict[str, Any], node: Any, top: bool
    ) -> tuple[list[str], list[str], list[str], dict[str, Any], dict[str, tuple[str, type]]] | None:
        """Loads, guards, statements, extra globals and ``key -> (variable, type)`` for one shape."""
        loads: list[str] = []
        guards: list[str] = []
        stmts: list[str] = []
        env: dict[str, Any] = {}
        seen: dict[str, tuple[str, type]] = {}
        run_vars: list[str] = []
        run_codes: list[int] = []

        def flush() -> None:
            if run_vars:
                stmts.append(f"ve(({', '.join(run_vars)},))")
                stmts.append(f"ce({tuple(run_codes)!r})")
                run_vars.clear()
                run_codes.clear()

        for i, (key, value) in enumerate(mapping.items()):
            if type(key) is not str:
                return None
            var = f"v{i}"
            kind = type(value)
            seen[key] = (var, kind)
            loads.append(f"{var} = d[{key!r}]")
            if kind is int or kind is float:
                guards.append(f"type({var}) is {kind.__name__}")
                code = node.codes.get(key)
                if code is None:
                    code = self.register(node, key)
                if code >= 0:
                    run_vars.append(var)
                    run_codes.append(code)
            elif kind is str:
                guards.append(f"type({var}) is str")
                code = node.codes.get(key)
                if code is None:
                    code = self.register(node, key)
                if code >= 0:
                    flush()
                    stmts.append(f"x = nf({var})")
                    stmts.append(f"if x is not None: ca({code}); va(x)")
            elif kind is dict or kind is list:
                guards.append(f"type({var}) is {kind.__name__}")
                flush()
                target = (
                    self.root
                    if (top and key == "metrics" and kind is dict)
                    else self.child(node, key)
                )
                env[f"n{i}"] = target
                stmts.append(f"{'walk' if kind is dict else 'walk_list'}({var}, n{i})")
            elif value is None:
                guards.append(f"{var} is None")
            elif kind is bool:
                guards.append(f"type({var}) is bool")
            else:
                return None
        flush()
        return loads, guards, stmts, env, seen

    def _compile(
        self, name: str, params: str, lines: list[str], env: dict[str, Any]
    ) -> Callable[..., Any]:
        source = f"def {name}({params}):\n" + "\n".join(f"    {line}" for line in lines) + "\n"
        namespace: dict[str, Any] = {**self.env, **env, "MISS": MISS}
        exec(compile(source, f"<runtail plan {name}>", "exec"), namespace)
        return namespace[name]

    def _plan(
        self, mapping: dict[str, Any], node: Any, top: bool, params: str
    ) -> Callable[..., Any] | None:
        if len(mapping) > MAX_KEYS:
            return None
        body = self._body(mapping, node, top)
        if body is None:
            return None
        loads, guards, stmts, env, seen = body
        lines = [*loads]
        if guards:
            lines.append(f"if not ({' and '.join(guards)}): return MISS")
        lines += stmts
        lines.append(f"return {_row(seen) if top else 'None'}")
        return self._compile("top_plan" if top else "nested_plan", params, lines, env)

    def nested(self, mapping: dict[str, Any], node: Any) -> Callable[[dict[str, Any]], Any] | None:
        """A plan ``f(d)`` for dicts of this shape below ``data``'s top level (None: walk in general)."""
        return self._plan(mapping, node, False, "d")

    def top(self, data: dict[str, Any]) -> Callable[..., Any] | None:
        """A plan ``f(d, seq, stamp, kind) -> row`` for ``data`` dicts of this shape (None: in general).

        The row is the message-level columns ``(seq, timestamp, type, phase,
        epoch, step, round, client_id)``, or :data:`MISS`.
        """
        return self._plan(data, self.root, True, "d, seq, stamp, kind")


def _row(seen: dict[str, tuple[str, type]]) -> str:
    """The row expression of a top-level plan: ``replay.tables._message_row``'s rule, decided
    here where the shape and its guarded types decide it; elsewhere ``index``
    (``replay.tables._index_value``) applies the rule at run time."""

    def column(keys: tuple[str, ...]) -> str:
        first = seen.get(keys[0])
        if first is not None and first[1] is int:
            return first[0]  # an int under the first key is the value
        metrics = seen.get("metrics")
        if not any(key in seen for key in keys) and (metrics is None or metrics[1] is not dict):
            return "None"  # nothing the rule could read
        return f"index(d, {keys!r})"

    phase = seen.get("phase")
    client = seen.get("client_id")
    if client is None or client[1] is _NONE:
        client_expr = "None"
    else:
        client_expr = client[0] if client[1] is str else f"client_text({client[0]})"
    return (
        f"(seq, stamp, kind, {phase[0] if phase is not None and phase[1] is str else 'None'}, "
        f"{column(EPOCH_KEYS)}, {column(STEP_KEYS)}, {column(ROUND_KEYS)}, {client_expr})"
    )
