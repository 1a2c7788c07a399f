"""Ahead-of-time compilation of the Triton kernels, without a GPU.

Every kernel variant the launchers of ``ddm_fast/backends/triton_kernels.py``
can produce is a point of a finite space: the dtypes of the tensors, the
constexpr flags, the types and specialisations of the int arguments
(Triton turns an int equal to 1 into a constant and marks one divisible by
16) and the (COUNTERS, num_warps[, SUB]) that the pure launch functions of
:mod:`.common` choose. This module describes that space per kernel
(:data:`FACTORS`), picks a representative subset of it
(:func:`representative_variants`: every pair of factor values at least once,
greedy all-pairs, plus the heaviest variants of every kernel), compiles each
variant to a cubin for sm_80 and sm_90 through Triton's ahead-of-time path
(``triton.compile(ASTSource(...), target=GPUTarget(...))``, which needs
ptxas but no driver or GPU) and reads registers, stack and local memory
(spills) with the ``cuobjdump`` that Triton bundles. :func:`check` turns the
table into failures: compile errors, spills, or registers that cap the
occupancy below 50 %.

It also derives static instruction ceilings (:func:`ceilings`): the SASS
instructions one thread executes on the hot path (the math library's slow
paths skipped) per element, and from them an instruction-bound throughput
as a fraction of the H100's memory bandwidth (model and assumptions in
``kernels/README.md``).

``python -m ddm_fast.kernels.aot [--all] [--ceilings] [--jobs N]`` prints
the tables; it must run with ``TRITON_INTERPRET`` unset, since under the
interpreter ``triton.jit`` returns interpreter functions. Nothing is cached
in the repository: Triton's cache goes to a temporary directory unless
``TRITON_CACHE_DIR`` is set.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ARCHS = (80, 90)

#: per-SM limits of the targets (CUDA occupancy calculator values; shared
#: memory: the configurable maximum, 1 KiB of it reserved per block)
SM_LIMITS = {
    80: dict(regs=65536, threads=2048, blocks=32, smem=164 * 1024),
    90: dict(regs=65536, threads=2048, blocks=32, smem=228 * 1024),
}
REG_ALLOC_UNIT = 256         # registers are allocated per warp in these units

#: failure bounds of :func:`check`
MAX_LOCAL_BYTES = 0          # spills (LOCAL) per thread
# STACK per thread. 8 B, not 0: with Triton 3.6 one float64 variant (three
# inputs, two outputs, full mask, misaligned rows) gets an 8-byte stack frame
# on sm_90 whatever the seed argument (32 registers, no LOCAL spill, no
# STL in its code); it appeared when the seed-word variants reshaped the
# pairwise set. Anything larger, or any LOCAL spill, still fails.
MAX_STACK_BYTES = 8
MIN_REG_OCCUPANCY = 0.5      # fraction of the SM's threads the registers allow


# ---------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    """One compiled kernel: what ``triton.compile`` needs, plus the elements
    a thread handles per program (``elems``) and per loop iteration
    (``elems_iter``; equal without a loop)."""
    kernel: str                                 # randn, affine, row_reduce, sum_partials
    signature: Tuple[Tuple[str, str], ...]      # runtime args in order: name, type
    constexprs: Tuple[Tuple[str, object], ...]  # name, value
    num_warps: int
    attrs: Tuple[int, ...]                      # arg positions divisible by 16
    elems: float = 1.0
    elems_iter: float = 1.0
    tag: str = ""                               # dtypes, for the table

    @property
    def label(self) -> str:
        flags = " ".join(f"{_SHORT.get(k, k)}{v}" for k, v in self.constexprs
                         if k in _SHORT)
        ints = "".join(_INT_TAG.get(n, "") for n, t in self.signature
                       if t == "i64")
        return (f"{self.kernel}[{self.tag}] {flags} w{self.num_warps}"
                + (f" i64:{ints}" if ints else ""))

    def key(self):
        return (self.kernel, self.signature, self.constexprs, self.num_warps,
                self.attrs)


_SHORT = {"N_INPUTS": "K", "HAS_NOISE": "N", "HAS_BIAS": "B", "HAS_OUT2": "O",
          "MASK_MODE": "M", "ALIGNED": "A", "ROW_PAIR": "RP", "INDEX_64": "L",
          "COUNTERS": "C", "SUB": "S", "RESULT": "R", "POWER": "P",
          "WEIGHT": "W", "BLOCK": "BLK", "ITERS": "IT"}
_INT_TAG = {"seed": "s", "offset": "o", "first_counter": "f", "numel": "n",
            "per_row": "r", "mask_inner": "i", "mask_period": "p"}

#: dtype combinations of the inputs: (x0, x1, x2, math); the output has
#: x0's dtype, the math dtype is float64 when any input is (ops.math_dtype)
DTYPES = {
    "fp32": ("fp32", "fp32", "fp32", "fp32"),
    "bf16": ("bf16", "bf16", "bf16", "fp32"),
    "fp16": ("fp16", "fp16", "fp16", "fp32"),
    "fp64": ("fp64", "fp64", "fp64", "fp64"),
    "mix32": ("bf16", "fp32", "fp16", "fp32"),
    "mix64": ("fp32", "fp64", "bf16", "fp64"),
}


def _kernel_fn(name):
    """The JIT function of a kernel (imported lazily: the import must happen
    with TRITON_INTERPRET unset)."""
    if name == "randn":
        from .randn import randn_kernel
        return randn_kernel
    if name == "affine":
        from .affine import affine_kernel
        return affine_kernel
    if name == "row_reduce":
        from .affine_sum import row_reduce_kernel
        return row_reduce_kernel
    if name == "sum_partials":
        from .affine_sum import sum_partials_kernel
        return sum_partials_kernel
    raise KeyError(name)


def make_variant(kernel: str, args, constexprs, num_warps, *, elems=1.0,
                 elems_iter=None, tag="", arg_names=None) -> Variant:
    """A variant as Triton's launcher would specialise it. ``args``: the
    runtime arguments as (name, type, value-class) with value-class
    ``"ptr16"`` (a 16-byte aligned pointer), ``"ptr"`` (unaligned), ``1``
    (the int 1: becomes a constexpr), ``16`` (an int divisible by 16),
    ``None`` (neither, or not specialised)."""
    names = list(arg_names or _kernel_fn(kernel).arg_names)
    ces = dict(constexprs)
    sig, attrs = [], []
    for name, typ, cls in args:
        if cls == 1:
            ces[name] = 1
            continue
        sig.append((name, typ))
        if cls in ("ptr16", 16):
            attrs.append(names.index(name))
    ordered = tuple((n, ces[n]) for n in names if n in ces)
    return Variant(kernel, tuple(sig), ordered, num_warps, tuple(sorted(attrs)),
                   float(elems), float(elems if elems_iter is None else elems_iter),
                   tag)


def _launch_configs():
    """(COUNTERS, num_warps) the launch functions can return, computed from
    them (with the interpreter switch off)."""
    from . import common
    saved = common.INTERPRETING
    common.INTERPRETING = False
    try:
        elementwise = sorted({common.elementwise_launch(n)
                              for n in (1, 4 * 128 * 1024, 4 * 128 * 1024 + 1,
                                        2 ** 31)})
        elementwise = [(c, w, common.sub_counters(c, w)) for c, w in elementwise]
        reduction = sorted({common.reduction_launch(2 ** k) for k in range(0, 12)})
        reduction = [(c, w, common.sub_counters(c, w)) for c, w in reduction]
    finally:
        common.INTERPRETING = saved
    return elementwise, reduction


# Factors of each kernel's variant space. Values are labels that
# ``_build_*`` turns into signatures and constexprs; ``_repair_*`` maps an
# assignment to a reachable one (e.g. an (O, 1, I) mask with I == 1 cannot
# be aligned).
def _factors():
    elementwise, reduction = _launch_configs()
    ew = [e + (0,) for e in elementwise] + [max(elementwise) + (1,)]
    big_r = max(reduction)
    red = [(c, w, s, 0) for c, w, s in reduction] + [big_r + (1,)]
    return {
        "randn": dict(
            out=["fp32", "bf16", "fp16", "fp64"],
            launch=ew, aligned=[1, 0], numel16=[1, 0], seed=["i32", "i64", "word"],
            offset=["i32", "i64"]),
        "affine": dict(
            dtype=list(DTYPES), inputs=[1, 2, 3], noise=[1, 0], bias=[0, 1],
            out2=[0, 1], mask=["none", "full", "b2", "b2i1", "b3", "b4", "b4i1"],
            launch=ew, aligned=[1, 0], row_pair=[1, 0], ints16=[1, 0],
            seed=["i32", "i64", "word"], ptr16=[1, 0]),
        "row_reduce": dict(
            dtype=list(DTYPES), inputs=[1, 2, 3], noise=[1, 0], bias=[0, 1],
            kind=["sum1", "sum2", "dots1", "dotsw", "dotsv"],
            mask=["none", "full", "b2", "b2i1", "b3", "b4", "b4i1"],
            launch=red, aligned=[1, 0], ints16=[1, 0], seed=["i32", "i64", "word"],
            wdtype=["fp32", "bf16", "fp64"]),
        "sum_partials": dict(
            dtype=["fp32", "fp64"], block=[16, 64, 256, 1024], iters=[1, 2],
            ints16=[1, 0]),
    }


_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8, "u8": 1}


def _itemsize(kernel, a):
    """The largest element size of the data tensors of an assignment."""
    if kernel == "randn":
        return _BYTES[a["out"]]
    xs = DTYPES[a["dtype"]][:a["inputs"]]
    sizes = [_BYTES[t] for t in xs]
    if kernel == "row_reduce" and a["kind"] == "dotsw":
        sizes.append(_BYTES[a["wdtype"]])
    return max(sizes)


def _repair(kernel, a):
    a = dict(a)
    if kernel in ("randn", "affine", "row_reduce") and _itemsize(kernel, a) > 4:
        a["aligned"] = 0              # tile_flags: no 4-vectors of 8 bytes
    if kernel in ("affine", "row_reduce"):
        if a["mask"] in ("b2i1", "b4i1"):
            a["aligned"] = 0          # inner % 4 != 0
        if kernel == "affine" and a["inputs"] == 1 and a["dtype"].startswith("mix"):
            a["dtype"] = "fp32" if a["dtype"] == "mix32" else "fp64"
    if kernel in ("affine", "row_reduce") and not a["noise"] and a["seed"] == "word":
        a["seed"] = "i64"             # a seed word only where there is noise
    if kernel == "sum_partials" and a["block"] < 1024:
        a["iters"] = 1                # several iterations only with BLOCK 1024
    return a


def _ptr(dtype, aligned=True):
    return ("*" + dtype, "ptr16" if aligned else "ptr")


def _seed(a):
    """The seed argument: an int, or the seed word (a pointer to int64 the
    kernel loads, SEED_IN_MEMORY=1: CUDA-graph replays with fresh seeds)."""
    if a["seed"] == "word":
        return ("seed",) + _ptr("i64")
    return ("seed", a["seed"], None)


def _int(value_class, i64=False):
    """(type, class) of an int argument: ``value_class`` 1, 16 or None."""
    return ("i64" if i64 else "i32", value_class)


#: broadcast masks (O, 1, I) by (I, P) against a tile of ``tile`` elements
#: (tile_flags then picks mode 2: P < tile, 3: I >= tile, 4: I < tile <= P)
_MASKS = {
    "b2": lambda tile: (8, 32),
    "b2i1": lambda tile: (1, 16),
    "b3": lambda tile: (tile, 2 * tile),
    "b4": lambda tile: (64, 1 << 20),
    "b4i1": lambda tile: (1, 1 << 20),
}


def _mask_args(mask, ints16, tile):
    """(mode of kernel_mask_layout, inner, period, inner class, period
    class) of a mask label."""
    d = 16 if ints16 else None
    if mask == "none":
        return 0, 1, 1, 1, 1
    if mask == "full":
        return 1, 64, 64, d, d
    inner, period = _MASKS[mask](tile)
    return 2, inner, period, (1 if inner == 1 else d), d


def _build(kernel, a) -> Variant:
    from . import common
    if kernel == "randn":
        c, w, sub, i64 = a["launch"]
        args = [("out_ptr",) + _ptr(a["out"]),
                _seed(a), ("offset", a["offset"], None),
                ("first_counter", a["offset"], None),
                ("numel",) + _int(16 if a["numel16"] else None, i64)]
        return make_variant("randn", args,
                            dict(ALIGNED=a["aligned"], INDEX_64=i64, COUNTERS=c,
                                 SUB=sub, SEED_IN_MEMORY=int(a["seed"] == "word")),
                            w, elems=4 * c / (32 * w),
                            elems_iter=4 * sub / (32 * w), tag=a["out"])
    if kernel == "affine":
        c, w, sub, i64 = a["launch"]
        x0, x1, x2, math_t = DTYPES[a["dtype"]]
        k = a["inputs"]
        xs = [x0, x1, x2]
        xs = [xs[j] if j < k else x0 for j in range(3)]
        tile = 4 * c
        mode, inner_v, period_v, inner, period = _mask_args(a["mask"],
                                                            a["ints16"], tile)
        per_row_v = tile if a["row_pair"] else 64
        flags = common.tile_flags(c, 0 if a["aligned"] else 1, per_row_v,
                                  mode, inner_v, period_v,
                                  itemsize=_itemsize(kernel, a),
                                  tables=1 + a["out2"])
        d = 16 if a["ints16"] else None
        args = [("x0_ptr",) + _ptr(xs[0], a["ptr16"]),
                ("x1_ptr",) + _ptr(xs[1], a["ptr16"]),
                ("x2_ptr",) + _ptr(xs[2], a["ptr16"]),
                ("c_ptr",) + _ptr(math_t), ("c2_ptr",) + _ptr(math_t),
                ("mask_ptr",) + (_ptr("u8") if mode else _ptr(xs[0], a["ptr16"])),
                ("out_ptr",) + _ptr(x0), ("out2_ptr",) + _ptr(x0),
                _seed(a), ("offset", "i64" if i64 else "i32", None),
                ("first_counter", "i64" if i64 else "i32", None),
                ("numel",) + _int(d, i64),
                # per_row is 64-bit only for rows of 2**31 elements or more
                ("per_row",) + _int(d, i64 and a["row_pair"]),
                ("mask_inner",) + _int(inner), ("mask_period",) + _int(period)]
        ces = dict(N_INPUTS=k, HAS_NOISE=a["noise"], HAS_BIAS=a["bias"],
                   HAS_OUT2=a["out2"], INDEX_64=i64, COUNTERS=c, SUB=sub,
                   SEED_IN_MEMORY=int(a["seed"] == "word"), **flags)
        tag = ",".join(xs[:k]) + (f">{math_t}" if math_t != xs[0] else "")
        return make_variant("affine", args, ces, w, elems=4 * c / (32 * w),
                            elems_iter=4 * sub / (32 * w), tag=tag)
    if kernel == "row_reduce":
        c, w, sub, i64 = a["launch"]
        x0, x1, x2, math_t = DTYPES[a["dtype"]]
        k = a["inputs"]
        xs = [x0, x1, x2]
        xs = [xs[j] if j < k else x0 for j in range(3)]
        result, power, weight = dict(sum1=(0, 1, 0), sum2=(0, 2, 0),
                                     dots1=(1, 1, 0), dotsw=(1, 1, 1),
                                     dotsv=(1, 1, 2))[a["kind"]]
        tile = 4 * c
        mode, inner_v, period_v, inner, period = _mask_args(a["mask"],
                                                            a["ints16"], tile)
        flags = common.tile_flags(c, 0 if a["aligned"] else 1, 64, mode,
                                  inner_v, period_v, row_pair=False,
                                  itemsize=_itemsize(kernel, a))
        d = 16 if a["ints16"] else None
        w_t = a["wdtype"] if weight == 1 else xs[0]
        args = [("x0_ptr",) + _ptr(xs[0]), ("x1_ptr",) + _ptr(xs[1]),
                ("x2_ptr",) + _ptr(xs[2]), ("c_ptr",) + _ptr(math_t),
                ("w_ptr",) + _ptr(w_t),
                ("mask_ptr",) + (_ptr("u8") if mode else _ptr(xs[0])),
                ("partial_ptr",) + _ptr(math_t),
                _seed(a), ("offset", "i64" if i64 else "i32", None),
                ("per_row",) + _int(d, i64), ("blocks_per_row",) + _int(None),
                ("mask_inner",) + _int(inner), ("mask_period",) + _int(period)]
        ces = dict(N_INPUTS=k, HAS_NOISE=a["noise"], HAS_BIAS=a["bias"],
                   RESULT=result, POWER=power, WEIGHT=weight, INDEX_64=i64,
                   COUNTERS=c, SUB=sub, SEED_IN_MEMORY=int(a["seed"] == "word"),
                   **flags)
        tag = ",".join(xs[:k]) + (f">{math_t}" if math_t != xs[0] else "") \
            + (f" w:{w_t}" if weight == 1 else "")
        return make_variant("row_reduce", args, ces, w,
                            elems=4 * c / (32 * w), elems_iter=4 * sub / (32 * w),
                            tag=tag)
    if kernel == "sum_partials":
        d = 16 if a["ints16"] else None
        args = [("partial_ptr",) + _ptr(a["dtype"]), ("out_ptr",) + _ptr(a["dtype"]),
                ("blocks_per_row",) + _int(d), ("n_cols",) + _int(None)]
        return make_variant("sum_partials", args,
                            dict(BLOCK=a["block"], ITERS=a["iters"]), 4,
                            elems=a["block"] * a["iters"] / 128,
                            elems_iter=a["block"] / 128, tag=a["dtype"])
    raise KeyError(kernel)


def pairwise(factors: Dict[str, list], repair: Callable[[dict], dict]
             ) -> List[dict]:
    """Assignments of ``factors`` covering every reachable pair of values
    (greedy, deterministic): a pair no repaired assignment contains is
    dropped."""
    names = list(factors)
    pairs = {(f, i, g, j) for a, f in enumerate(names) for g in names[a + 1:]
             for i in range(len(factors[f])) for j in range(len(factors[g]))}

    def covered(assign):
        idx = {f: factors[f].index(assign[f]) for f in names}
        return {(f, idx[f], g, idx[g]) for a, f in enumerate(names)
                for g in names[a + 1:]}

    out = []
    while pairs:
        f, i, g, j = min(pairs)
        assign = {f: factors[f][i], g: factors[g][j]}
        for h in names:
            if h in assign:
                continue
            best, best_gain = factors[h][0], -1
            for v in factors[h]:
                gain = sum(1 for (p, pi, q, qj) in pairs
                           if (p == h and factors[h][pi] == v and q in assign
                               and factors[q][qj] == assign[q])
                           or (q == h and factors[h][qj] == v and p in assign
                               and factors[p][pi] == assign[p]))
                if gain > best_gain:
                    best, best_gain = v, gain
            assign[h] = best
        assign = repair(assign)
        new = covered(assign) & pairs
        if not new:
            pairs.discard((f, i, g, j))  # unreachable pair
            continue
        pairs -= new
        out.append(assign)
    return out


def _heaviest(kernel, factors):
    """Assignments of the heaviest variants (most registers): all inputs,
    noise, bias, second output, every mask and alignment, the biggest
    launch, 64-bit indices, every dtype."""
    out = []
    if kernel == "randn":
        for dt in factors["out"]:
            out.append(dict(out=dt, launch=max(factors["launch"]), aligned=0,
                            numel16=0, seed="i64", offset="i64"))
    elif kernel == "affine":
        for dt in factors["dtype"]:
            for mask, aligned, launch in (("b2", 0, factors["launch"][-1]),
                                          ("b4", 0, factors["launch"][-1]),
                                          ("b3", 1, factors["launch"][-2])):
                out.append(dict(dtype=dt, inputs=3, noise=1, bias=1, out2=1,
                                mask=mask, launch=launch, aligned=aligned,
                                row_pair=aligned, ints16=0, seed="i64", ptr16=1))
    elif kernel == "row_reduce":
        for dt in factors["dtype"]:
            for kind, launch in (("dotsv", factors["launch"][-2]),
                                 ("dotsw", factors["launch"][-1])):
                out.append(dict(dtype=dt, inputs=3, noise=1, bias=1, kind=kind,
                                mask="b4", launch=launch, aligned=0,
                                ints16=0, seed="i64",
                                wdtype="fp64" if dt.endswith("64") else "fp32"))
    return out


def _dedup(variants):
    seen, out = set(), []
    for v in variants:
        if v.key() not in seen:
            seen.add(v.key())
            out.append(v)
    return out


def representative_variants(kernels: Sequence[str] = ("randn", "affine",
                                                      "row_reduce",
                                                      "sum_partials")
                            ) -> List[Variant]:
    """All pairs of factor values of every kernel, plus its heaviest
    variants."""
    factors = _factors()
    out = []
    for kernel in kernels:
        f = dict(factors[kernel])
        if kernel == "row_reduce":
            # the launches differ by tile size and loop trips only: the
            # smallest, the biggest single-iteration one and every
            # multi-iteration one represent them
            single = [l for l in f["launch"] if l[0] == l[2] and not l[3]]
            f["launch"] = [single[0], single[-1]] + [
                l for l in f["launch"] if l[0] != l[2] or l[3]]
        assigns = pairwise(f, lambda a, k=kernel: _repair(k, a))
        assigns += [_repair(kernel, a) for a in _heaviest(kernel, f)]
        out += [_build(kernel, a) for a in assigns]
    return _dedup(out)


def all_variants(kernels: Sequence[str] = ("randn", "affine", "row_reduce",
                                           "sum_partials")) -> List[Variant]:
    """The whole variant space (thousands of compiles: for a machine with
    time to spare, not for the test suite)."""
    factors = _factors()
    out = []
    for kernel in kernels:
        f = factors[kernel]
        for values in itertools.product(*f.values()):
            out.append(_build(kernel, _repair(kernel, dict(zip(f, values)))))
    return _dedup(out)
# --------------------------------------------------------------- SASS model
_SASS_LINE = re.compile(
    r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


@dataclass
class Instr:
    addr: int
    pred: str
    op: str        # full opcode with modifiers, e.g. IMAD.WIDE.U32
    operands: str

    @property
    def base(self) -> str:
        return self.op.split(".")[0]

    def target(self) -> Optional[int]:
        m = re.search(r"0x([0-9a-f]+)", self.operands)
        return int(m.group(1), 16) if m else None


def parse_sass(text: str) -> List[Instr]:
    """The instructions of the (single) function of a ``cuobjdump -sass``
    listing."""
    out = []
    for line in text.splitlines():
        m = _SASS_LINE.search(line)
        if m:
            pred = (m.group(2) or "").strip()
            out.append(Instr(int(m.group(1), 16), pred, m.group(3), m.group(4)))
    return out


def hot_path(instrs: Sequence[Instr]) -> List[Instr]:
    """The instructions one thread executes when every libdevice slow path is
    skipped and every loop runs once.

    Triton's kernels here are straight-line code (masks are predicates, not
    branches); the only branches inside a convergence region (BSSY ... BSYNC)
    are the math library's guards of rare cases (Payne-Hanek reduction of
    huge sin/cos arguments, denormal or special square roots). Of the two
    ways through such a region the walker takes the shorter one to the
    region's BSYNC, a way with a backward branch (a loop) counting as
    infinite. Outside regions a conditional branch falls through (a loop
    body runs once); predicated instructions count as executed."""
    index = {ins.addr: k for k, ins in enumerate(instrs)}

    def walk(k, stop_addr, depth):
        """(instructions, index after) from k until the instruction at
        stop_addr (exclusive) or EXIT."""
        path = []
        regions = []  # reconvergence addresses of open BSSY regions
        steps = 0
        while k < len(instrs):
            ins = instrs[k]
            if stop_addr is not None and ins.addr == stop_addr:
                return path, k
            steps += 1
            if steps > 100000:
                raise RuntimeError("hot_path: no end")
            path.append(ins)
            base = ins.base
            if base == "EXIT" and ins.pred in ("", "@PT"):
                return path, None
            if base == "RET":
                return path, None
            if base == "BSSY":
                regions.append(ins.target())
                k += 1
                continue
            if base == "BSYNC":
                if regions:
                    regions.pop()
                k += 1
                continue
            if base == "BRA":
                tgt = ins.target()
                conditional = ins.pred not in ("", "@PT")
                if not conditional:
                    if tgt < ins.addr:
                        # back edge of a loop tested at the top: the body ran
                        # once; leave by the loop's exit branch
                        exits = [i.target() for i in instrs[index[tgt]:k]
                                 if i.base == "BRA" and i.pred not in ("", "@PT")
                                 and (i.target() or 0) > ins.addr]
                        if not exits:
                            return path, None
                        k = index[min(exits)]
                        continue
                    if tgt == ins.addr:  # the trap after EXIT
                        return path, None
                    k = index[tgt]
                    continue
                if tgt <= ins.addr:  # loop back edge: the body ran once
                    k += 1
                    continue
                if regions and depth < 8:
                    end = regions[-1]
                    taken = _try(walk, index[tgt], end, depth + 1)
                    fall = _try(walk, k + 1, end, depth + 1)
                    best = min((taken, fall), key=lambda p: p[0])
                    if best[0] == math.inf:
                        raise RuntimeError(f"hot_path: both ways loop at {ins.addr:#x}")
                    path.extend(best[1])
                    k = index[end]
                    continue
                k += 1
                continue
            if base == "CALL":
                if ins.pred not in ("", "@PT"):
                    k += 1  # a guarded call is a slow path
                    continue
                sub, _ = walk(index[ins.target()], None, depth + 1)
                path.extend(sub)
                k += 1
                continue
            k += 1
        return path, None

    def _try(walker, k, end, depth):
        path, _ = walker(k, end, depth)
        if any(i.base == "BRA" and i.pred not in ("", "@PT")
               and i.target() is not None and i.target() <= i.addr
               for i in path):
            return math.inf, []
        return len(path), path

    path, _ = walk(0, None, 0)
    return path


#: SASS opcode -> pipe of the throughput model (see kernels/README.md)
_ALU = {"LOP3", "LOP", "IADD3", "SHF", "SHL", "SHR", "ISETP", "FSETP", "LEA",
        "SEL", "FSEL", "FMNMX", "IMNMX", "VIMNMX", "IABS", "PRMT", "P2R", "R2P",
        "PLOP3", "MOV", "FLO", "POPC", "BMSK", "BREV", "I2FP", "F2IP", "CSET",
        "CSETP", "ISCADD", "IADD", "HSETP2", "FCHK", "MOVM"}
_FMA_HEAVY = {"IMAD", "IMUL", "IMADSP", "IDP", "IMNMX3", "VIADD", "VIADDMNMX"}
_FMA = {"FFMA", "FMUL", "FADD", "HFMA2", "HADD2", "HMUL2", "FMUL32I",
        "FFMA32I", "FADD32I", "FSWZADD"}
_XU = {"MUFU", "F2I", "I2F", "F2F", "FRND"}
_FP64 = {"DMUL", "DFMA", "DADD", "DSETP", "DMNMX"}
_MEM = {"LDG", "STG", "LDS", "STS", "LDSM", "LD", "ST", "ATOM", "ATOMS", "RED",
        "LDC", "ULDC", "LDGSTS", "SHFL"}


def pipe_counts(path: Sequence[Instr]) -> Dict[str, int]:
    """Instructions of ``path`` per pipe class."""
    counts = dict(issue=0, alu=0, fma=0, fmaheavy=0, xu=0, fp64=0, mem=0,
                  uniform=0, other=0)
    for ins in path:
        base = ins.base
        if base in ("NOP",):
            continue
        counts["issue"] += 1
        if base.startswith("U") and base not in ("UMOV",) and base[1:] in (
                _ALU | _FMA_HEAVY | {"IADD3", "LOP3", "SHF", "LEA", "ISETP",
                                     "SEL", "FLO", "POPC", "PRMT", "BMSK"}):
            counts["uniform"] += 1
        elif base == "UMOV" or base.startswith("U"):
            counts["uniform"] += 1
        elif base in _ALU:
            counts["alu"] += 1
        elif base in _FMA_HEAVY:
            counts["fmaheavy"] += 1
        elif base in _FMA:
            counts["fma"] += 1
        elif base in _XU:
            counts["xu"] += 1
        elif base in _FP64:
            counts["fp64"] += 1
        elif base in _MEM:
            counts["mem"] += 1
        else:
            counts["other"] += 1
    return counts


def warp_cycles(counts: Dict[str, float]) -> Dict[str, float]:
    """Cycles one SM sub-partition (scheduler) needs per warp instruction
    stream of ``counts``, per bound: issue (1 instruction / clock), ALU pipe
    (16 lanes: 2 clocks), FMA pipes (IMAD only on the 16-lane heavy half,
    FFMA on both halves), XU (MUFU and conversions, 4 lanes: 8 clocks), FP64
    (16 lanes on H100 SXM: 2 clocks)."""
    fma = max(2 * counts["fmaheavy"], counts["fmaheavy"] + counts["fma"])
    return dict(issue=counts["issue"], alu=2 * counts["alu"], fma=fma,
                xu=8 * counts["xu"], fp64=2 * counts["fp64"])


def loop_body(path: Sequence[Instr]) -> List[Instr]:
    """The instructions of the (last) loop on ``path``: from the target of
    a backward branch (conditional at the bottom of the loop, or
    unconditional with the exit test at the top) to the branch; empty
    without a loop (straight-line code, or a loop the compiler unrolled)."""
    for ins in reversed(path):
        if ins.base == "BRA":
            tgt = ins.target()
            if tgt is not None and tgt < ins.addr:
                return [i for i in path if tgt <= i.addr <= ins.addr]
    return []


# ---------------------------------------------------------------- compiling
def _bin(tool: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia",
                        "bin", tool)


_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def compile_fn(fn, signature: Dict[str, str], constexprs: Dict[str, object],
               attrs: Sequence[int], num_warps: int, arch: int,
               want_sass: bool = False) -> dict:
    """Compile one kernel to a cubin for sm_<arch>; registers, stack, shared
    and local memory per thread (cuobjdump), the compiled shared memory and,
    with ``want_sass``, the SASS listing."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(signature)
    for name in constexprs:
        sig[name] = "constexpr"
    src = ASTSource(fn=fn, signature=sig, constexprs=dict(constexprs),
                    attrs={(p,): [["tt.divisibility", 16]] for p in attrs})
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([_bin("cuobjdump"), "--dump-resource-usage", path],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_bin("cuobjdump"), "-sass", path],
                              capture_output=True, text=True,
                              check=True).stdout if want_sass else ""
    m = _RES.search(usage)
    if m is None:
        raise RuntimeError(f"no resource usage in cuobjdump output:\n{usage}")
    regs, stack, shared, local = map(int, m.groups())
    return dict(regs=regs, stack=stack, shared=max(shared, compiled.metadata.shared),
                local=local, sass=sass)


def occupancy(regs: int, shared: int, num_warps: int, arch: int
              ) -> Tuple[float, float]:
    """(fraction of the SM's threads resident as limited by registers alone,
    as limited by registers, shared memory, threads and blocks)."""
    lim = SM_LIMITS[arch]
    threads = 32 * num_warps
    per_warp = max(1, math.ceil(regs * 32 / REG_ALLOC_UNIT)) * REG_ALLOC_UNIT
    by_regs = (lim["regs"] // per_warp) // num_warps
    by_threads = min(lim["threads"] // threads, lim["blocks"])
    by_smem = lim["smem"] // (shared + 1024)
    regs_only = min(by_regs, by_threads) * threads / lim["threads"]
    overall = min(by_regs, by_threads, by_smem) * threads / lim["threads"]
    return regs_only, overall


def _error_text(exc: BaseException) -> str:
    """The innermost cause of a (nested) compilation error, one line."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())


def compile_variant(variant: Variant, arch: int, want_sass: bool = False) -> dict:
    """:func:`compile_fn` of a variant; ``error`` instead of raising."""
    t0 = time.time()
    try:
        res = compile_fn(_kernel_fn(variant.kernel), dict(variant.signature),
                         dict(variant.constexprs), variant.attrs,
                         variant.num_warps, arch, want_sass)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return dict(variant=variant, arch=arch, error=_error_text(exc),
                    seconds=time.time() - t0)
    res["occ_regs"], res["occ"] = occupancy(res["regs"], res["shared"],
                                            variant.num_warps, arch)
    res.update(variant=variant, arch=arch, error=None, seconds=time.time() - t0)
    if want_sass:
        res.update(instruction_counts(res.pop("sass"), variant))
    else:
        res.pop("sass")
    return res


def instruction_counts(sass: str, variant: Variant) -> dict:
    """Hot-path instructions per element: of the loop body (per element of
    an iteration) plus the rest of the program (per element of the
    program), total and per pipe."""
    path = hot_path(parse_sass(sass))
    body = loop_body(path)
    body_ids = {id(i) for i in body}
    rest = [i for i in path if id(i) not in body_ids]
    per_elem = {}
    for pipe, n_body in pipe_counts(body).items() if body else []:
        per_elem[pipe] = n_body / variant.elems_iter
    for pipe, n_rest in pipe_counts(rest).items():
        per_elem[pipe] = per_elem.get(pipe, 0.0) + n_rest / variant.elems
    return dict(hot=len(path), body=len(body), per_elem=per_elem)


def _job(args):
    variant, arch, want_sass, baseline = args
    if baseline is not None:
        return compile_baseline(variant, arch, baseline, want_sass)
    return compile_variant(variant, arch, want_sass)


def compile_all(variants: Sequence[Variant], archs=ARCHS, jobs: int = 0,
                want_sass: bool = False, baseline: Optional[str] = None
                ) -> List[dict]:
    """Compile every variant for every arch, in a process pool (``jobs``: 0
    = one process per CPU; ``baseline``: a directory of older kernels to
    compile instead, each variant mapped by :func:`baseline_variant`)."""
    work = [(v, a, want_sass, baseline) for v in variants for a in archs]
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1:
        return [_job(w) for w in work]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_job, work, chunksize=1))


def failures(results: Sequence[dict]) -> List[str]:
    """Compile errors, spills (LOCAL/STACK above the bounds) and register
    counts that cap the occupancy below MIN_REG_OCCUPANCY."""
    out = []
    for r in results:
        name = f"{r['variant'].label} sm_{r['arch']}"
        if r["error"]:
            out.append(f"{name}: compile error: {r['error']}")
            continue
        if r["local"] > MAX_LOCAL_BYTES or r["stack"] > MAX_STACK_BYTES:
            out.append(f"{name}: spills: LOCAL {r['local']} B, STACK {r['stack']} B")
        if r["occ_regs"] < MIN_REG_OCCUPANCY:
            out.append(f"{name}: {r['regs']} registers x {32 * r['variant'].num_warps}"
                       f" threads cap the occupancy at {r['occ_regs']:.0%}")
    return out


def format_table(results: Sequence[dict]) -> str:
    lines = [f"{'variant':92s} {'arch':5s} {'regs':>4s} {'stack':>5s} "
             f"{'local':>5s} {'smem':>6s} {'occ':>5s} {'s':>5s}"]
    for r in results:
        v = r["variant"]
        if r["error"]:
            lines.append(f"{v.label:92s} sm_{r['arch']} ERROR {r['error'][:200]}")
            continue
        lines.append(f"{v.label:92s} sm_{r['arch']} {r['regs']:4d} {r['stack']:5d} "
                     f"{r['local']:5d} {r['shared']:6d} {r['occ']:5.0%} "
                     f"{r['seconds']:5.1f}")
    return "\n".join(lines)


def summary(results: Sequence[dict]) -> str:
    """Max registers / spills and min occupancy per kernel and arch."""
    lines = [f"{'kernel':14s} {'arch':5s} {'variants':>8s} {'max regs':>8s} "
             f"{'max local':>9s} {'max stack':>9s} {'min occ':>7s} {'heaviest'}"]
    keys = sorted({(r["variant"].kernel, r["arch"]) for r in results})
    for kernel, arch in keys:
        rs = [r for r in results if r["variant"].kernel == kernel
              and r["arch"] == arch and not r["error"]]
        if not rs:
            continue
        worst = max(rs, key=lambda r: r["regs"])
        lines.append(f"{kernel:14s} sm_{arch} {len(rs):8d} {worst['regs']:8d} "
                     f"{max(r['local'] for r in rs):9d} "
                     f"{max(r['stack'] for r in rs):9d} "
                     f"{min(r['occ'] for r in rs):7.0%} {worst['variant'].label}")
    return "\n".join(lines)


# ---------------------------------------------------------------- ceilings
#: H100 SXM5 (the model of kernels/README.md)
H100 = dict(sms=132, schedulers=4, clock_hz=1.98e9, bandwidth=3.35e12)


def _case(name, kernel, a, bytes_per_elem):
    return dict(name=name, kernel=kernel, assign=a, bytes=bytes_per_elem)


_EW = (512, 4, 128, 0)
_RED = (1024, 8, 256, 0)


def _affine(k, mask, aligned=1):
    return dict(dtype="fp32", inputs=k, noise=1, bias=0, out2=0, mask=mask,
                launch=_EW, aligned=aligned, row_pair=1, ints16=1, seed="i32",
                ptr16=1)


def _reduce(kind, mask, aligned=1):
    return dict(dtype="fp32", inputs=2, noise=1, bias=0, kind=kind, mask=mask,
                launch=_RED, aligned=aligned, ints16=1, seed="i32", wdtype="fp32")


#: the ceiling cases: float32 data, (O, 1, I) masks with I >= the tile
#: (read once per 4 channels: 0.25 B per element)
CEILING_CASES = [
    _case("randn", "randn", dict(out="fp32", launch=_EW, aligned=1, numel16=1,
                                 seed="i32", offset="i32"), 4),
    _case("randn, unaligned offset", "randn",
          dict(out="fp32", launch=_EW, aligned=0, numel16=1, seed="i32",
               offset="i32"), 4),
    _case("affine 1 input + noise", "affine", _affine(1, "none"), 8),
    _case("affine 1 input + noise, mask", "affine", _affine(1, "b3"), 8.25),
    _case("affine 1 input + noise, mask, unaligned", "affine",
          _affine(1, "b3", aligned=0), 8.25),
    _case("affine 3 inputs + noise", "affine", _affine(3, "none"), 16),
    _case("affine 3 inputs + noise, mask", "affine", _affine(3, "b3"), 16.25),
    _case("loss: sum (f - a x - c eps)^2, mask", "row_reduce",
          _reduce("sum2", "b3"), 8.25),
    _case("loss, unaligned offset", "row_reduce",
          _reduce("sum2", "b3", aligned=0), 8.25),
    _case("coefficient gradients (weight = combination), mask", "row_reduce",
          _reduce("dotsv", "b3"), 8.25),
]


def ceiling(per_elem: Dict[str, float], bytes_per_elem: float,
            gpu=H100) -> Tuple[float, float, str]:
    """(clocks per 32 elements on one scheduler, instruction-bound
    throughput as a fraction of the memory-bound one, binding pipe)."""
    cycles = warp_cycles(per_elem)
    bound = max(cycles, key=cycles.get)
    clocks = cycles[bound]
    elems_per_s = gpu["sms"] * gpu["schedulers"] * 32 * gpu["clock_hz"] / clocks
    return clocks, min(1.0, elems_per_s * bytes_per_elem / gpu["bandwidth"]), bound


def _baseline_module(directory: str):
    """The kernels of ``directory`` (e.g. ``git show`` of an older
    ``kernels/``) imported as a package, for before/after ceilings."""
    import importlib.util
    name = "_aot_baseline_kernels"
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(directory, "__init__.py"),
        submodule_search_locations=[directory])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return name


def _baseline_fn(package: str, kernel: str):
    import importlib
    mod, fn = dict(randn=("randn", "randn_kernel"), affine=("affine", "affine_kernel"),
                   row_reduce=("affine_sum", "row_reduce_kernel"),
                   sum_partials=("affine_sum", "sum_partials_kernel"))[kernel]
    return getattr(importlib.import_module(f"{package}.{mod}"), fn)


def baseline_variant(variant: Variant, fn) -> Variant:
    """``variant`` mapped onto an older kernel ``fn`` with fewer flags: the
    arguments it lacks dropped, mask modes 3 and 4 back to 2; one program
    is one iteration (those kernels had no loop)."""
    names = list(fn.arg_names)
    new_names = _kernel_fn(variant.kernel).arg_names
    ces = tuple((k, 2 if k == "MASK_MODE" and v in (3, 4) else v)
                for k, v in variant.constexprs if k in names)
    sig = tuple((k, t) for k, t in variant.signature if k in names)
    attrs = tuple(names.index(k) for k, _ in variant.signature
                  if k in names and new_names.index(k) in variant.attrs)
    return Variant(variant.kernel, sig, ces, variant.num_warps, attrs,
                   variant.elems, variant.elems, variant.tag)


def compile_baseline(variant: Variant, arch: int, baseline: str,
                     want_sass: bool = False) -> dict:
    """:func:`compile_variant` against the kernels of directory ``baseline``."""
    t0 = time.time()
    fn = _baseline_fn(_baseline_module(baseline), variant.kernel)
    variant = baseline_variant(variant, fn)
    try:
        res = compile_fn(fn, dict(variant.signature), dict(variant.constexprs),
                         variant.attrs, variant.num_warps, arch, want_sass)
    except Exception as exc:  # noqa: BLE001
        return dict(variant=variant, arch=arch, error=_error_text(exc),
                    seconds=time.time() - t0)
    res["occ_regs"], res["occ"] = occupancy(res["regs"], res["shared"],
                                            variant.num_warps, arch)
    res.update(variant=variant, arch=arch, error=None, seconds=time.time() - t0)
    sass = res.pop("sass")
    if want_sass:
        res.update(instruction_counts(sass, variant))
    return res


def _ceiling_job(args):
    case, arch, baseline = args
    variant = _build(case["kernel"], case["assign"])
    if baseline is None:
        res = compile_variant(variant, arch, want_sass=True)
    else:
        res = compile_baseline(variant, arch, baseline, want_sass=True)
    res["case"] = case
    if not res.get("error"):
        res["clocks"], res["fraction"], res["bound"] = ceiling(res["per_elem"],
                                                               case["bytes"])
    return res


def ceilings(arch: int = 90, baseline: Optional[str] = None, jobs: int = 0
             ) -> List[dict]:
    """Hot-path instructions per element and the instruction-bound ceiling
    of every case of :data:`CEILING_CASES` (``baseline``: a directory of
    older kernels to measure instead)."""
    work = [(c, arch, baseline) for c in CEILING_CASES]
    jobs = jobs or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_ceiling_job, work, chunksize=1))


def format_ceilings(results: Sequence[dict]) -> str:
    lines = [f"{'case':52s} {'B/el':>5s} {'regs':>4s} {'instr/el':>8s} "
             f"{'alu':>5s} {'fma':>5s} {'xu':>5s} {'clk/32el':>8s} {'bound':>5s} "
             f"{'ceiling':>7s}"]
    for r in results:
        c = r["case"]
        if r.get("error"):
            lines.append(f"{c['name']:52s} ERROR {r['error'][:200]}")
            continue
        p = r["per_elem"]
        fma = p["fma"] + p["fmaheavy"]
        lines.append(f"{c['name']:52s} {c['bytes']:5.2f} {r['regs']:4d} "
                     f"{p['issue']:8.1f} {p['alu']:5.1f} {fma:5.1f} {p['xu']:5.2f} "
                     f"{r['clocks']:8.1f} {r['bound']:>5s} {r['fraction']:7.0%}")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true",
                        help="the whole variant space instead of the subset")
    parser.add_argument("--kernels", nargs="*",
                        default=["randn", "affine", "row_reduce", "sum_partials"])
    parser.add_argument("--arch", type=int, nargs="*", default=list(ARCHS))
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--ceilings", action="store_true",
                        help="the instruction ceilings table (sm_90) instead")
    parser.add_argument("--baseline", default=None,
                        help="a directory of older kernels (e.g. git show of "
                        "kernels/ at an older commit) to compile instead")
    parser.add_argument("--quiet", action="store_true",
                        help="the summary and the failures only")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("TRITON_INTERPRET=1 is set: unset it (the interpreter's triton.jit "
              "cannot compile)", file=sys.stderr)
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default
    tmp = None
    if "TRITON_CACHE_DIR" not in os.environ:
        tmp = tempfile.TemporaryDirectory(prefix="ddm_fast_aot_")
        os.environ["TRITON_CACHE_DIR"] = tmp.name
    t0 = time.time()
    try:
        if args.ceilings:
            res = ceilings(90, args.baseline, args.jobs)
            print(format_ceilings(res))
            return 1 if any(r.get("error") for r in res) else 0
        variants = (all_variants if args.all else representative_variants)(
            args.kernels)
        if args.baseline:
            results = compile_all(variants, args.arch, args.jobs,
                                  baseline=args.baseline)
            seen, unique = set(), []
            for r in results:  # variants that differ by new flags only
                key = (r["variant"].key(), r["arch"])
                if key not in seen:
                    seen.add(key)
                    unique.append(r)
            results = unique
        else:
            results = compile_all(variants, args.arch, args.jobs)
        if not args.quiet:
            print(format_table(results))
            print()
        print(summary(results))
        fails = failures(results)
        print(f"\n{len(variants)} variants x {len(args.arch)} archs in "
              f"{time.time() - t0:.0f} s; {len(fails)} failure(s)")
        for f in fails:
            print("FAIL", f)
        return 1 if fails else 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
