"""Lookups through index tensors, lowered to statements of the language before parsing.

An index that is itself a tensor read — ``E[T[b, l], d]`` (a gather), ``L += -X[n, Y[n]]`` (a loss by
label), ``O[T[i], d] += X[i, d]`` (a scatter-add) — cannot be reasoned about by isl. It is written as
a compare-and-select over the indexed axis, with a fresh index ``g`` running over it:

    E[T[b, l], d]  read       ->  G[b, l, d] += where(T[b, l] == g, E[g, d], 0)   (G read in its place)
    O[T[i], d] += X[i, d]     ->  O[g, d] += where(T[i] == g, X[i, d], 0)

so domains, range inference, code generation on every target and gradients (a gather's is the
scatter-add, and back) are those of ordinary statements. Each value of an index tensor selects at
most one ``g``; a value outside the axis would select none, so the op checks every value before it
runs (``Lookup``; ``Op.check_lookups``) and raises an error naming the tensor, the position and the
value. Cost: the extent of the indexed axis per element looked up (a direct load is future work).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass


@dataclass(frozen=True)
class Lookup:
    """Index tensor ``index`` selects along axis ``axis`` of tensor ``tensor`` (a read), or, for a
    written lookup (``tensor`` is the written one), along an axis whose extent ``ranges={index: n}``
    gives (``index_name``: the fresh index that runs over it)."""
    index: str
    tensor: str
    axis: int
    written: bool
    index_name: str


class Unsupported(Exception):
    """A lookup the language cannot take (the parser reports it with the line)."""

    def __init__(self, node: ast.AST, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.node, self.message, self.hint = node, message, hint


def subscript_items(sub: ast.Subscript) -> list[ast.expr]:
    """The index items of ``X[i, j]`` (one item for ``X[i]``)."""
    return list(sub.slice.elts) if isinstance(sub.slice, ast.Tuple) else [sub.slice]


def _is_lookup(item: ast.expr) -> bool:
    return any(isinstance(n, ast.Subscript) for n in ast.walk(item))


def _index_names(items: list[ast.expr]) -> list[str]:
    names: list[str] = []
    for item in items:
        for n in ast.walk(item):
            if isinstance(n, ast.Name) and n.id not in names:
                names.append(n.id)
    return names


class _Lowering:
    def __init__(self, taken: set[str]) -> None:
        self.taken = set(taken)
        self.lookups: list[Lookup] = []
        self.before: list[ast.stmt] = []  # gather statements for the statement being lowered

    def fresh(self, stem: str) -> str:
        k = 0
        while f"{stem}{k}" in self.taken:
            k += 1
        self.taken.add(f"{stem}{k}")
        return f"{stem}{k}"

    def split(self, sub: ast.Subscript) -> tuple[list[ast.expr], list[tuple[str, ast.Subscript, int]]]:
        """The access's index items with each lookup replaced by a fresh index name, and the lookups
        (fresh name, the index tensor's read, axis)."""
        items, found = [], []
        for axis, item in enumerate(subscript_items(sub)):
            if not _is_lookup(item):
                items.append(item)
                continue
            if not (isinstance(item, ast.Subscript) and isinstance(item.value, ast.Name)):
                raise Unsupported(item, f"index '{ast.unparse(item)}' mixes a tensor read into arithmetic",
                                   "an index through an index tensor must be the read alone, e.g. E[T[i], d]")
            if any(_is_lookup(inner) for inner in subscript_items(item)):
                raise Unsupported(item, f"index '{ast.unparse(item)}' looks up through a lookup",
                                   "look the inner one up into a tensor of its own first")
            g = self.fresh("g")
            items.append(ast.Name(g, ast.Load()))
            found.append((g, item, axis))
        return items, found

    def condition(self, found: list[tuple[str, ast.Subscript, int]]) -> ast.expr:
        tests = [ast.Compare(index, [ast.Eq()], [ast.Name(g, ast.Load())]) for g, index, _ in found]
        return tests[0] if len(tests) == 1 else ast.BoolOp(ast.And(), tests)

    def read(self, sub: ast.Subscript, line: int) -> ast.expr:
        """A gather statement for the read ``sub`` (appended to ``before``); its temporary's read."""
        items, found = self.split(sub)
        tensor = sub.value.id
        for g, index, axis in found:
            self.lookups.append(Lookup(index.value.id, tensor, axis, False, g))
        keep = _index_names([x for it in subscript_items(sub)
                             for x in (subscript_items(it) if _is_lookup(it) else [it])])
        temp = self.fresh(f"{tensor}_at")
        target = ast.Subscript(ast.Name(temp, ast.Load()),
                               ast.Tuple([ast.Name(n, ast.Load()) for n in keep], ast.Load()) if keep
                               else ast.Constant(0), ast.Store())
        picked = ast.Subscript(ast.Name(tensor, ast.Load()), ast.Tuple(items, ast.Load()), ast.Load())
        value = ast.Call(ast.Name("where", ast.Load()), [self.condition(found), picked, ast.Constant(0)], [])
        stmt = ast.AugAssign(target, ast.Add(), value)
        ast.copy_location(stmt, sub)
        stmt.lineno = line
        self.before.append(ast.fix_missing_locations(stmt))
        load = ast.Subscript(ast.Name(temp, ast.Load()), target.slice, ast.Load())
        return ast.copy_location(load, sub)

    def expression(self, node: ast.expr, line: int) -> ast.expr:
        if isinstance(node, ast.Subscript):
            if isinstance(node.value, ast.Name) and any(_is_lookup(it) for it in subscript_items(node)):
                return self.read(node, line)
            return node
        for field, value in ast.iter_fields(node):
            if isinstance(value, ast.expr):
                setattr(node, field, self.expression(value, line))
            elif isinstance(value, list):
                setattr(node, field, [self.expression(v, line) if isinstance(v, ast.expr) else v for v in value])
        return node

    def statement(self, node: ast.stmt) -> list[ast.stmt]:
        self.before = []
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            node.value = self.expression(node.value, node.lineno)
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
                getattr(node, "target", None)
            if isinstance(target, ast.Subscript) and any(_is_lookup(it) for it in subscript_items(target)):
                if not (isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add)):
                    raise Unsupported(node, f"'{ast.unparse(target)}' is written through an index tensor with "
                                             f"'{'=' if isinstance(node, ast.Assign) else ast.unparse(node)}'",
                                       "a scatter through an index tensor accumulates: write it with '+='")
                items, found = self.split(target)
                for g, index, axis in found:
                    self.lookups.append(Lookup(index.value.id, target.value.id, axis, True, g))
                target.slice = ast.Tuple(items, ast.Load()) if len(items) > 1 else items[0]
                node.value = ast.Call(ast.Name("where", ast.Load()),
                                      [self.condition(found), node.value, ast.Constant(0)], [])
                ast.fix_missing_locations(node)
        return [*self.before, node]


def appearance(body: list[ast.stmt]) -> list[str]:
    """Tensor names in order of first appearance as written (a tensor before the index tensors in its
    subscript): the order of an op's inputs."""
    order: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            if node.value.id not in order:
                order.append(node.value.id)
            visit(node.slice)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)
    for stmt in body:
        if isinstance(stmt, (ast.Assign, ast.AugAssign)):
            visit(stmt.value)  # (the right side is read first)
            for target in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]):
                visit(target)
    return order


def lower_lookups(body: list[ast.stmt]) -> tuple[list[ast.stmt], tuple[Lookup, ...]]:
    """The statements with every lookup lowered (see the module docstring), and the lookups."""
    taken = {n.id for stmt in body for n in ast.walk(stmt) if isinstance(n, ast.Name)}
    lowering = _Lowering(taken)
    out: list[ast.stmt] = []
    for stmt in body:
        out.extend(lowering.statement(stmt))
    return out, tuple(lowering.lookups)
