"""The primitives as ``torch.library`` ops, with one backend-neutral autograd.

For each backend ``name`` of :data:`ddm_fast.backends.REGISTRY` this module
defines, on first use, four ops in the ``ddm_fast`` namespace:

- ``randn_{name}(numel, seed, offset, dtype, device)``
- ``affine_{name}(x0, x1?, x2?, coeffs, coeffs2?, mask?, seed, offset, bias, out_dtype)``
  -> (out, out2)
- ``affine_sum_{name}(x0, x1?, x2?, coeffs, mask?, seed, offset, power, bias)``
- ``affine_dots_{name}(x0, x1?, x2?, weight?, coeffs, mask?, seed, offset, bias, weight_kind)``

whose implementations are the backend module's functions (``triton_op`` for
the Triton backend, so Inductor sees its kernels; ``custom_op`` otherwise,
which also keeps Inductor from lowering the reference's Philox chain). The
fake (meta) implementations and the autograd formulas are written once,
here, in terms of the same backend's primitives: input gradients are affine
launches, coefficient gradients ``affine_dots`` reductions, and the noise is
regenerated from (seed, offset), never saved. A new backend is only its
forward kernels.
"""
from __future__ import annotations

import importlib
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import backends

__all__ = ["Primitives", "primitives"]


class Primitives(NamedTuple):
    """The ops of one backend, plus its plain forward functions (called
    directly when no autograd or tracing is involved: less overhead)."""
    randn: object
    affine: object
    affine_sum: object
    affine_dots: object
    module: object


_CACHE: Dict[str, Primitives] = {}


def primitives(name: str) -> Primitives:
    """The registered ops of backend ``name`` (defined on first call)."""
    if name not in _CACHE:
        _CACHE[name] = _define(name)
    return _CACHE[name]


# ------------------------------------------------------------- definition
def _define(name: str) -> Primitives:
    module = importlib.import_module(backends.REGISTRY[name].module)
    kind = getattr(module, "LIBRARY_KIND", "custom_op")
    if kind == "triton_op":
        from torch.library import triton_op as decorate
    else:
        from torch.library import custom_op as decorate

    def randn(numel: int, seed: int, offset: int, dtype: torch.dtype,
              device: torch.device) -> Tensor:
        return module.randn(numel, seed, offset, dtype, device)

    def affine(x0: Tensor, x1: Optional[Tensor], x2: Optional[Tensor],
               coeffs: Tensor, coeffs2: Optional[Tensor], mask: Optional[Tensor],
               seed: int, offset: int, bias: bool, out_dtype: torch.dtype
               ) -> Tuple[Tensor, Tensor]:
        return module.affine(x0, x1, x2, coeffs, coeffs2, mask, seed, offset,
                             bias, out_dtype)

    def affine_sum(x0: Tensor, x1: Optional[Tensor], x2: Optional[Tensor],
                   coeffs: Tensor, mask: Optional[Tensor], seed: int, offset: int,
                   power: int, bias: bool) -> Tensor:
        return module.affine_sum(x0, x1, x2, coeffs, mask, seed, offset, power,
                                 bias)

    def affine_dots(x0: Tensor, x1: Optional[Tensor], x2: Optional[Tensor],
                    weight: Optional[Tensor], coeffs: Tensor,
                    mask: Optional[Tensor], seed: int, offset: int, bias: bool,
                    weight_kind: int) -> Tensor:
        return module.affine_dots(x0, x1, x2, weight, coeffs, mask, seed, offset,
                                  bias, weight_kind)

    ops = {}
    for fn in (randn, affine, affine_sum, affine_dots):
        ops[fn.__name__] = decorate(f"ddm_fast::{fn.__name__}_{name}",
                                    mutates_args=())(fn)
    if kind != "triton_op":  # triton_op derives its fake from the launches
        ops["randn"].register_fake(_fake_randn)
        ops["affine"].register_fake(_fake_affine)
        ops["affine_sum"].register_fake(_fake_affine_sum)
        ops["affine_dots"].register_fake(_fake_affine_dots)
    prims = Primitives(ops["randn"], ops["affine"], ops["affine_sum"],
                       ops["affine_dots"], module)
    _register_autograd(prims)
    return prims


def _fake_randn(numel, seed, offset, dtype, device):
    return torch.empty(numel, dtype=dtype, device=device)


def _fake_affine(x0, x1, x2, coeffs, coeffs2, mask, seed, offset, bias, out_dtype):
    out = torch.empty(x0.shape, dtype=out_dtype, device=x0.device)
    out2 = torch.empty(x0.shape if coeffs2 is not None else (0,),
                       dtype=out_dtype, device=x0.device)
    return out, out2


def _fake_affine_sum(x0, x1, x2, coeffs, mask, seed, offset, power, bias):
    return coeffs.new_empty(coeffs.shape[0])


def _fake_affine_dots(x0, x1, x2, weight, coeffs, mask, seed, offset, bias,
                      weight_kind):
    return coeffs.new_empty(coeffs.shape)


# --------------------------------------------------------------- autograd
def _register_autograd(p: Primitives) -> None:
    """Backward formulas of ``affine`` and ``affine_sum`` in terms of the
    backend's own primitives ``p``."""

    def input_grads(weights: List[Tensor], tables: List[Tensor], columns,
                    mask, dtypes, seed, offset, bias, inputs):
        """Gradients of the inputs ``columns``: grad_k = valid * sum_w
        table_w[:, k] * weight_w. With ``inputs`` given (the affine_sum
        power-2 case) the weights are the inputs themselves and the tables
        already full combinations. Two inputs of one dtype share a launch
        (the second output)."""
        grads: Dict[int, Tensor] = {}
        if inputs is None:
            w = [t.contiguous() for t in weights] + [None] * (3 - len(weights))
        else:
            w = list(inputs)
        pending = list(columns)
        while pending:
            k = pending.pop(0)
            mate = next((j for j in pending if dtypes[j] == dtypes[k]), None)
            if mate is not None:
                pending.remove(mate)
            out, out2 = p.affine(
                w[0], w[1], w[2], tables[k],
                tables[mate] if mate is not None else None, mask,
                seed if inputs is not None else -1,
                offset if inputs is not None else 0,
                bias if inputs is not None else False, dtypes[k])
            grads[k] = out
            if mate is not None:
                grads[mate] = out2
        return grads

    # ---- affine
    def affine_setup(ctx, inputs, output):
        x0, x1, x2, coeffs, coeffs2, mask, seed, offset, bias, out_dtype = inputs
        ctx.seed, ctx.offset, ctx.bias = seed, offset, bias
        ctx.dtypes = [x.dtype if x is not None else None for x in (x0, x1, x2)]
        ctx.shape = x0.shape
        keep = coeffs.requires_grad or (coeffs2 is not None and coeffs2.requires_grad)
        ctx.save_for_backward(*(x if keep else None for x in (x0, x1, x2)),
                              coeffs, coeffs2, mask)

    def affine_backward(ctx, grad_out, grad_out2):
        x0, x1, x2, coeffs, coeffs2, mask = ctx.saved_tensors
        needs = ctx.needs_input_grad
        pairs = [(grad_out, coeffs, 3)]
        if coeffs2 is not None:
            pairs.append((grad_out2, coeffs2, 4))
        pairs = [pair for pair in pairs if pair[0] is not None]
        grads: List[Optional[Tensor]] = [None] * 10
        columns = [k for k in range(3) if needs[k]]
        if columns and pairs:
            # grad_k = sum over outputs w of table_w[:, k] * grad_w
            tables = {k: torch.stack([pair[1][:, k] for pair in pairs], dim=1)
                      .contiguous() for k in columns}
            got = input_grads([pair[0] for pair in pairs], tables, columns, mask,
                              ctx.dtypes, 0, 0, False, None)
            for k in columns:
                grads[k] = got[k].reshape(ctx.shape)
        for weight, table, slot in pairs:
            if needs[slot]:
                grads[slot] = p.affine_dots(
                    x0, x1, x2, weight.contiguous(), table, mask, ctx.seed,
                    ctx.offset, ctx.bias, 1)
        return tuple(grads)

    p.affine.register_autograd(affine_backward, setup_context=affine_setup)

    # ---- affine_sum
    def affine_sum_setup(ctx, inputs, output):
        x0, x1, x2, coeffs, mask, seed, offset, power, bias = inputs
        ctx.seed, ctx.offset, ctx.power, ctx.bias = seed, offset, power, bias
        ctx.dtypes = [x.dtype if x is not None else None for x in (x0, x1, x2)]
        ctx.shape = x0.shape
        any_input_grad = any(x is not None and x.requires_grad for x in (x0, x1, x2))
        keep = coeffs.requires_grad or (power == 2 and any_input_grad)
        ctx.save_for_backward(*(x if keep else None for x in (x0, x1, x2)),
                              coeffs, mask)

    def affine_sum_backward(ctx, grad_rows):
        x0, x1, x2, coeffs, mask = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grads: List[Optional[Tensor]] = [None] * 9
        grad_rows = grad_rows.to(coeffs.dtype)
        columns = [k for k in range(3) if needs[k]]
        if ctx.power == 2:
            if columns:
                # d/dx_k sum v^2 = 2 g c_k v: the combination, rescaled per row
                tables = {k: ((2.0 * grad_rows * coeffs[:, k])[:, None] * coeffs)
                          .contiguous() for k in columns}
                got = input_grads(None, tables, columns, mask, ctx.dtypes,
                                  ctx.seed, ctx.offset, ctx.bias, (x0, x1, x2))
                for k in columns:
                    grads[k] = got[k]
            if needs[3]:
                grads[3] = 2.0 * grad_rows[:, None] * p.affine_dots(
                    x0, x1, x2, None, coeffs, mask, ctx.seed, ctx.offset,
                    ctx.bias, 2)
        else:
            # d/dx_k sum v = g c_k on valid elements: a per-row constant
            rows = coeffs.shape[0]
            for k in columns:
                value = (grad_rows * coeffs[:, k]).to(ctx.dtypes[k])
                value = value[:, None].expand(rows, ctx.shape.numel() // rows)
                value = value.reshape(ctx.shape)
                if mask is not None:
                    value = torch.where(mask != 0, value, 0.0)
                grads[k] = value
            if needs[3]:
                grads[3] = grad_rows[:, None] * p.affine_dots(
                    x0, x1, x2, None, coeffs, mask, ctx.seed, ctx.offset,
                    ctx.bias, 0)
        return tuple(grads)

    p.affine_sum.register_autograd(affine_sum_backward,
                                   setup_context=affine_sum_setup)
