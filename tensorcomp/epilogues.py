"""Whole-program pass ``fuse_epilogues``: an elementwise op call fused into the call that produces its input.

A traced step calls a contraction and then an activation on its result (a convolution, then ReLU),
each a kernel of its own that walks the whole tensor. When an elementwise call (one statement, every
written and read index plain, no reduction) directly follows the call that made one of its inputs,
the two become one op: the producer's statements, then the consumer's, tensors and scalars renamed
apart (``_a``, ``_b``), the consumer reading the producer's tensor in place of its input. The
producer's outputs that something else still reads (the activation's gradient reads the
convolution's output) stay outputs (``Op(outputs=...)``); the others become temporaries, which the
compiler folds into their reader (a bias add into the activation) or keeps in the loop nest the
statements share (``schedule.fusion``). Chains fuse too: a merged call is a producer again.

Plain ops (``tc.op``) merge, and gradient ops whose statements run over exactly the domains a plain
op's range inference gives them (``gradient_calls.as_plain``: a ReLU's gradient into the max pool's
or the convolution's gradient before it); other gradient ops bind to their base op's domains, which
their source alone does not state, and stay apart.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from .autotune.canon import renamed_source
from .errors import TensorcompError
from .gradient_calls import as_plain
from .opdef import Op
from .trace import Call, Program


def _elementwise(op: Op) -> bool:
    """One statement writing each element once from reads at plain indices (an activation, a scale)."""
    if type(op) is not Op or op.lookup_checks or op.schedule or op.given_ranges or op.pad_widths or \
            op.kept_outputs or len(op.program.statements) != 1:
        return False
    st = op.program.statements[0]
    plain = [lin.plain_var for lin in st.index]
    if None in plain or len(set(plain)) != len(plain) or st.reduction_names() or st.reduce not in (None, "sum"):
        return False
    return all(lin.plain_var is not None for a in st.accesses() for lin in a.index)


def rewritable(op: Op) -> bool:
    """A plain op whose source a pass may rewrite: no schedule of its own, no index tensors."""
    return type(op) is Op and not op.lookup_checks and not op.schedule


def index_names(op: Op) -> set[str]:
    """Every index name of the op's statements."""
    return {n for st in op.program.statements for n in st.index_names()}


def merged_precision(a: Op, b: Op) -> str:
    """The merged op's precision: TF32 where one is and the other computes no sums (its precision
    changes nothing), else float32."""
    if a.precision == b.precision:
        return a.precision
    fp32 = a if a.precision == "fp32" else b
    return "tf32" if all(st.reduce is None for st in fp32.program.statements) else "fp32"


def producer_then(a: Op, ma: dict[str, str], text: str, keep: tuple[str, ...], b: Op) -> Op | None:
    """Op ``a``'s statements renamed by ``ma`` (its ranges and padding with them), then the statements
    ``text`` of op ``b``, writing outputs ``keep``; None where the language refuses the merged source
    (the calls then stay apart)."""
    try:
        return Op(renamed_source(a.program, ma) + "\n" + text, ranges=a.given_ranges or None,
                  pad={ma[k]: w for k, w in a.pad_widths.items()} or None,
                  pad_value={ma[k]: x for k, x in a.pad_values.items()} or None, outputs=keep,
                  precision=merged_precision(a, b))
    except TensorcompError:
        return None


def _merge(a: Call, b: Call, needed: set[int]) -> Call | None:
    """``a`` then ``b`` as one call, or None when the merged source does not come out as planned."""
    pa, pb = a.op.program, b.op.program
    ma = {t: f"{t}_a" for t in (*a.op.inputs, *pa.outputs, *pa.temporaries, *a.op.params)}
    made = dict(zip(a.outputs, pa.outputs))  # value -> the producer's tensor holding it
    mb = {i: f"{i}_b" for i in index_names(b.op)}
    mb.update({t: f"{t}_b" for t in (*pb.outputs, *pb.temporaries, *b.op.params)})
    for name, v in zip(b.op.inputs, b.inputs):
        mb[name] = ma[made[v]] if v in made else f"{name}_b"
    if set(ma.values()) & {mb[t] for t in (*pb.outputs, *pb.temporaries, *b.op.params)} or \
            index_names(a.op) & set(mb.values()):
        return None
    keep = [ma[t] for t, v in zip(pa.outputs, a.outputs) if v in needed] + [mb[t] for t in pb.outputs]
    merged = producer_then(a.op, ma, renamed_source(pb, mb), tuple(keep), b.op)
    if merged is None:
        return None
    value = {ma[t]: v for t, v in zip(a.op.inputs, a.inputs)}
    value.update({mb[t]: v for t, v in zip(b.op.inputs, b.inputs) if v not in made})
    value.update({ma[t]: v for t, v in zip(pa.outputs, a.outputs)})
    value.update({mb[t]: v for t, v in zip(pb.outputs, b.outputs)})
    if any(t not in value for t in (*merged.inputs, *merged.outputs)):
        return None
    params = tuple((ma[n], x) for n, x in a.params) + tuple((mb[n], x) for n, x in b.params)
    return Call(merged, params, tuple(value[t] for t in merged.inputs), tuple(value[t] for t in merged.outputs))


def plain_call(item, p: Program):
    """A gradient op's call as the call of an equal plain op where there is one (``gradient_calls``)."""
    if isinstance(item, Call) and type(item.op) is not Op:
        return as_plain(item, p.specs) or item
    return item


def fuse_epilogues(p: Program) -> Program:
    """Each elementwise call that directly follows the call making one of its inputs runs inside it."""
    keep = p.kept()
    body = list(p.body)
    k = 0
    while k + 1 < len(body):
        a, b = body[k], body[k + 1]
        if isinstance(a, Call) and isinstance(b, Call) and set(a.outputs) & set(b.inputs) and \
                len(b.op.program.statements) == 1:  # (checked first: gradient calls are bound to compare)
            b = plain_call(b, p)
            a = plain_call(a, p) if _elementwise(b.op) else a
        if isinstance(a, Call) and isinstance(b, Call) and rewritable(a.op) and _elementwise(b.op) and \
                set(a.outputs) & set(b.inputs):
            reads = Counter(v for item in body for v in (item.inputs if isinstance(item, Call) else (item.source,)))
            mine = Counter(b.inputs)
            needed = {v for v in a.outputs if v in keep or reads[v] > mine[v]}
            merged = _merge(a, b, needed)
            if merged is not None:
                body[k:k + 2] = [merged]  # (and it may take the next elementwise call too)
                continue
        k += 1
    return replace(p, body=tuple(body))
