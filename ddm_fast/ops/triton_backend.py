"""The ``triton`` backend: the fused primitives as Triton kernels.

Each kernel launch lives in a ``torch.library.triton_op`` (namespace
``ddm_fast``), so the ops work eagerly, under ``torch.compile(fullgraph=True)``
(Inductor sees the kernels) and with autograd:

- ``ddm_fast::randn_triton``       noise[offset + i], SPEC §9.
- ``ddm_fast::affine_triton``      the affine step (and its optional second
                                   output); differentiable.
- ``ddm_fast::affine_sum_triton``  per-row masked sums of the combination (or
                                   its square); differentiable.
- ``ddm_fast::affine_dots_triton`` per-row, per-column sums of w * column, the
                                   coefficient gradients (not differentiable).

Semantics are those of :mod:`ddm_fast.ops.reference` (the oracle). Details:

- "No noise" is ``seed = -1`` in the op schemas (valid seeds are >= 0).
- Math is float32, float64 when an input or ``coeffs`` is float64 (the
  coefficient tables are cast to that dtype, which the kernels read as their
  math dtype). The noise is generated in float32 as in the reference.
- Non-contiguous inputs are copied to contiguous ones first; the noise index
  is always the logical row-major index.
- Masks are read in their own small shape when the data shape splits as
  (O, M, I) with the mask (O, 1, I): (1,1,H,W), (B,1,H,W), (1,C,H,W),
  (B,C,1,1) and full masks against (B,C,H,W). Any other broadcast pattern
  (e.g. (B,1,H,1)) is materialised once with ``mask.expand(shape)``. Bool
  masks are read as uint8.
- The backward never stores the noise: it regenerates it from
  (seed, offset). Gradients with respect to the inputs are themselves affine
  launches; those with respect to the coefficients are ``affine_dots``
  reductions. Only the gradient of ``affine_sum(power=1)`` with respect to
  its inputs (a per-row constant times the mask) is written in plain torch.
- ``affine_sum`` is deterministic: partial sums per (row, block) and a second
  fixed-order reduction, no atomics, block sizes a function of the shape only
  (not autotuned).

On CPU the kernels run only through Triton's interpreter (``TRITON_INTERPRET=1``
set before Triton is imported): slow, meant for tests.
"""
from __future__ import annotations

import os
import re
from typing import List, Optional, Sequence, Tuple

import torch

from ..backends import BackendUnavailableError

__all__ = ["why_unavailable", "randn", "affine", "affine_sum"]

MIN_TRITON = (3, 5)  # int64 Philox counters use their high word from 3.5 on

try:
    import triton
except ImportError as _exc:  # the backend reports itself unavailable
    triton = None
    _TRITON_IMPORT_ERROR = str(_exc)


def _static_reason() -> Optional[str]:
    """Why Triton itself cannot serve (missing, too old), or None."""
    if triton is None:
        return (f"triton is not installed ({_TRITON_IMPORT_ERROR}); install "
                f"triton>={MIN_TRITON[0]}.{MIN_TRITON[1]}")
    version = tuple(int(p) for p in re.findall(r"\d+", triton.__version__)[:2])
    if version < MIN_TRITON:
        return (f"triton {triton.__version__} is too old; the counter-based "
                f"noise needs triton>={MIN_TRITON[0]}.{MIN_TRITON[1]}")
    return None


# computed once: why_unavailable runs on every dispatch, also under
# torch.compile, where it must stay cheap and traceable
_STATIC_REASON = _static_reason()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def why_unavailable(name: str = "triton") -> Optional[str]:
    """None if the Triton kernels can run here, else why not."""
    if _STATIC_REASON is not None:
        return _STATIC_REASON
    if torch.cuda.is_available() or _interpreting():
        return None
    return ("no CUDA device is visible and TRITON_INTERPRET=1 is not set (the "
            "Triton interpreter runs the kernels on CPU, slowly, for tests)")


def _check_device(device) -> None:
    device = torch.device(device)
    if device.type == "cuda" or (device.type == "cpu" and _interpreting()):
        return
    raise BackendUnavailableError(
        f"the triton backend cannot run tensors on {device}: it needs CUDA "
        f"tensors, or CPU tensors with TRITON_INTERPRET=1 set before triton "
        f"is imported")


# ------------------------------------------------------------------ masks
def _mask_layout(mask_shape: Sequence[int], data_shape: Sequence[int]
                 ) -> Optional[Tuple[int, int]]:
    """(inner, period) with mask index = (i // period) * inner + i % inner for
    the flat data index i, or None when the broadcast is not of the form
    data (O, M, I) / mask (O, 1, I). period == inner means the mask has the
    data's layout (index i)."""
    mask_shape = (1,) * (len(data_shape) - len(mask_shape)) + tuple(mask_shape)
    phase = 0  # 0: leading full dims (O), 1: broadcast dims (M), 2: trailing full (I)
    middle = inner = 1
    for size, mask_size in zip(data_shape, mask_shape):
        if size == 1:
            continue  # a size-1 dim fits any phase
        full = mask_size == size
        if phase == 0 and not full:
            phase = 1
        elif phase == 1 and full:
            phase = 2
        elif phase == 2 and not full:
            return None
        if phase == 1:
            middle *= size
        elif phase == 2:
            inner *= size
    return inner, middle * inner


def _mask_mode(mask: Optional[torch.Tensor], data_shape) -> Tuple[int, int, int]:
    """(MASK_MODE, inner, period) of the kernels for a prepared mask."""
    if mask is None:
        return 0, 1, 1
    layout = _mask_layout(mask.shape, data_shape)
    if layout is None:
        raise ValueError(f"mask of shape {tuple(mask.shape)} is not in a "
                         f"kernel layout for data {tuple(data_shape)}")
    inner, period = layout
    return (1 if inner == period else 2), inner, period


def _prepare_mask(mask: Optional[torch.Tensor], shape) -> Optional[torch.Tensor]:
    """The mask as the kernels read it: contiguous in its own shape (or
    expanded to the data shape for broadcast patterns outside (O, 1, I)),
    bool viewed as uint8."""
    if mask is None:
        return None
    if _mask_layout(mask.shape, shape) is None:
        mask = mask.expand(shape)
    mask = mask.contiguous()
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    return mask


def _math_dtype(tensors) -> torch.dtype:
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


# ------------------------------------------------------------ the ops
if _STATIC_REASON is None:  # triton present and recent enough
    from torch.library import triton_op, wrap_triton

    from ..kernels.affine import affine_kernel
    from ..kernels.affine_sum import row_reduce_kernel, sum_partials_kernel
    from ..kernels.common import needs_int64_index, reduction_launch
    from ..kernels.randn import randn_kernel

    @triton_op("ddm_fast::randn_triton", mutates_args=())
    def _randn_op(numel: int, seed: int, offset: int, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
        out = torch.empty(numel, dtype=dtype, device=device)
        if numel > 0:
            first = offset // 4
            n_counters = (offset + numel - 1) // 4 - first + 1
            wrap_triton(randn_kernel)[
                lambda meta: (triton.cdiv(n_counters, meta["COUNTERS"]),)](
                out, seed, offset, first, numel)
        return out

    @triton_op("ddm_fast::affine_triton", mutates_args=())
    def _affine_op(x0: torch.Tensor, x1: Optional[torch.Tensor],
                   x2: Optional[torch.Tensor], coeffs: torch.Tensor,
                   coeffs2: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                   seed: int, offset: int, bias: bool
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(out, out2); out2 is empty (0,) when coeffs2 is None. Inputs,
        coefficient tables and mask must be contiguous (see affine())."""
        n_inputs = 1 + (x1 is not None) + (x2 is not None)
        numel = x0.numel()
        out = torch.empty_like(x0)
        out2 = torch.empty_like(x0) if coeffs2 is not None else x0.new_empty(0)
        if numel == 0:
            return out, out2
        mask_mode, mask_inner, mask_period = _mask_mode(mask, x0.shape)
        first = offset // 4
        n_counters = (offset + numel - 1) // 4 - first + 1
        wrap_triton(affine_kernel)[
            lambda meta: (triton.cdiv(n_counters, meta["COUNTERS"]),)](
            x0, x1 if x1 is not None else x0, x2 if x2 is not None else x0,
            coeffs, coeffs2 if coeffs2 is not None else coeffs,
            mask if mask is not None else x0,
            out, out2 if coeffs2 is not None else out,
            max(seed, 0), offset, first, numel, numel // coeffs.shape[0],
            mask_inner, mask_period,
            N_INPUTS=n_inputs, HAS_NOISE=int(seed >= 0), HAS_BIAS=int(bias),
            HAS_OUT2=int(coeffs2 is not None), MASK_MODE=mask_mode,
            INDEX_64=needs_int64_index(numel))
        return out, out2

    def _row_reduce(x0, x1, x2, weight, coeffs, mask, seed, offset, bias,
                    result, power, weight_kind):
        """Both reduction stages; (rows, 1) for result 0, (rows, columns) for
        result 1, in the dtype of coeffs."""
        n_inputs = 1 + (x1 is not None) + (x2 is not None)
        rows, n_coeff_cols = coeffs.shape
        n_out_cols = 1 if result == 0 else n_coeff_cols
        numel = x0.numel()
        if numel == 0:
            return torch.zeros((rows, n_out_cols), dtype=coeffs.dtype,
                               device=x0.device)
        per_row = numel // rows
        counters_per_row = (per_row + 6) // 4  # a row spans at most this many
        counters, num_warps = reduction_launch(counters_per_row)
        blocks_per_row = triton.cdiv(counters_per_row, counters)
        partials = torch.empty(rows * blocks_per_row * n_out_cols,
                               dtype=coeffs.dtype, device=x0.device)
        mask_mode, mask_inner, mask_period = _mask_mode(mask, x0.shape)
        wrap_triton(row_reduce_kernel)[(rows * blocks_per_row,)](
            x0, x1 if x1 is not None else x0, x2 if x2 is not None else x0,
            coeffs, weight if weight is not None else x0,
            mask if mask is not None else x0, partials,
            max(seed, 0), offset, per_row, blocks_per_row,
            mask_inner, mask_period,
            N_INPUTS=n_inputs, HAS_NOISE=int(seed >= 0), HAS_BIAS=int(bias),
            MASK_MODE=mask_mode, RESULT=result, POWER=power,
            WEIGHT=weight_kind, INDEX_64=needs_int64_index(numel),
            COUNTERS=counters, num_warps=num_warps)
        out = torch.empty((rows, n_out_cols), dtype=coeffs.dtype,
                          device=x0.device)
        block = min(1024, max(16, triton.next_power_of_2(blocks_per_row)))
        wrap_triton(sum_partials_kernel)[(rows * n_out_cols,)](
            partials, out, blocks_per_row, n_out_cols, BLOCK=block)
        return out

    @triton_op("ddm_fast::affine_sum_triton", mutates_args=())
    def _affine_sum_op(x0: torch.Tensor, x1: Optional[torch.Tensor],
                       x2: Optional[torch.Tensor], coeffs: torch.Tensor,
                       mask: Optional[torch.Tensor], seed: int, offset: int,
                       power: int, bias: bool) -> torch.Tensor:
        """Per-row sums of (combination) ** power over valid elements."""
        return _row_reduce(x0, x1, x2, None, coeffs, mask, seed, offset, bias,
                           0, power, 0).reshape(coeffs.shape[0])

    @triton_op("ddm_fast::affine_dots_triton", mutates_args=())
    def _affine_dots_op(x0: torch.Tensor, x1: Optional[torch.Tensor],
                        x2: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                        coeffs: torch.Tensor, mask: Optional[torch.Tensor],
                        seed: int, offset: int, bias: bool, weight_kind: int
                        ) -> torch.Tensor:
        """(rows, columns): per row and column j of the combination (inputs,
        noise, 1) the sum over valid elements of w * column_j, with w = 1
        (weight_kind 0), ``weight`` (1) or the combination itself (2)."""
        return _row_reduce(x0, x1, x2, weight, coeffs, mask, seed, offset,
                           bias, 1, 1, weight_kind)

    # -------------------------------------------------------- autograd
    def _input_grads(weights, coeff_tables, columns, mask, dtypes, shape):
        """Gradients of the inputs ``columns`` (indices k): one affine launch
        per pair, grad_k = mask * sum_w table_w[:, k] * weight_w (coeffs2
        gives the second input of the pair from the same loads)."""
        grads = {}
        w0 = weights[0].contiguous()
        w1 = weights[1].contiguous() if len(weights) > 1 else None
        for start in range(0, len(columns), 2):
            pair = columns[start:start + 2]
            tables = [torch.stack([t[:, k] for t in coeff_tables], dim=1)
                      .contiguous() for k in pair]
            out, out2 = torch.ops.ddm_fast.affine_triton(
                w0, w1, None, tables[0], tables[1] if len(pair) > 1 else None,
                mask, -1, 0, False)
            grads[pair[0]] = out
            if len(pair) > 1:
                grads[pair[1]] = out2
        return [grads[k].reshape(shape).to(dtypes[k]) if k in grads else None
                for k in range(3)]

    def _save_inputs(ctx, xs, coeffs, coeffs2, mask, keep_inputs):
        """Saves the coefficient tables and the mask; the inputs only when
        the backward reads them (never the noise: it is regenerated)."""
        ctx.save_for_backward(*(x if keep_inputs else None for x in xs),
                              coeffs, coeffs2, mask)
        ctx.dtypes = [x.dtype if x is not None else None for x in xs]
        ctx.shape = xs[0].shape

    def _affine_setup(ctx, inputs, output):
        x0, x1, x2, coeffs, coeffs2, mask, seed, offset, bias = inputs
        ctx.seed, ctx.offset, ctx.bias = seed, offset, bias
        need_inputs = coeffs.requires_grad or (coeffs2 is not None
                                               and coeffs2.requires_grad)
        _save_inputs(ctx, (x0, x1, x2), coeffs, coeffs2, mask, need_inputs)

    def _affine_backward(ctx, grad_out, grad_out2):
        x0, x1, x2, coeffs, coeffs2, mask = ctx.saved_tensors
        needs = ctx.needs_input_grad
        pairs = [(grad_out, coeffs, 3)]
        if coeffs2 is not None:
            pairs.append((grad_out2, coeffs2, 4))
        pairs = [p for p in pairs if p[0] is not None]
        grads: List[Optional[torch.Tensor]] = [None] * 9
        columns = [k for k in range(3) if needs[k]]
        if columns and pairs:
            grads[:3] = _input_grads([p[0] for p in pairs], [p[1] for p in pairs],
                                     columns, mask, ctx.dtypes, ctx.shape)
        for weight, table, slot in pairs:
            if needs[slot]:
                grads[slot] = torch.ops.ddm_fast.affine_dots_triton(
                    x0, x1, x2, weight.contiguous(), table, mask, ctx.seed,
                    ctx.offset, ctx.bias, 1)
        return tuple(grads)

    _affine_op.register_autograd(_affine_backward, setup_context=_affine_setup)

    def _affine_sum_setup(ctx, inputs, output):
        x0, x1, x2, coeffs, mask, seed, offset, power, bias = inputs
        ctx.seed, ctx.offset, ctx.power, ctx.bias = seed, offset, power, bias
        any_input_grad = any(x is not None and x.requires_grad
                             for x in (x0, x1, x2))
        need_inputs = coeffs.requires_grad or (power == 2 and any_input_grad)
        _save_inputs(ctx, (x0, x1, x2), coeffs, None, mask, need_inputs)

    def _affine_sum_backward(ctx, grad_rows):
        x0, x1, x2, coeffs, _, mask = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grads: List[Optional[torch.Tensor]] = [None] * 9
        grad_rows = grad_rows.to(coeffs.dtype)
        columns = [k for k in range(3) if needs[k]]
        if ctx.power == 2:
            # d/dx_k sum v^2 = 2 g c_k v: the combination, rescaled per row
            scaled = []
            for k in columns:
                scale = 2.0 * grad_rows * coeffs[:, k]
                scaled.append((scale[:, None] * coeffs).contiguous())
            for start in range(0, len(columns), 2):
                pair = columns[start:start + 2]
                tables = scaled[start:start + 2]
                out, out2 = torch.ops.ddm_fast.affine_triton(
                    x0, x1, x2, tables[0], tables[1] if len(pair) > 1 else None,
                    mask, ctx.seed, ctx.offset, ctx.bias)
                grads[pair[0]] = out.to(ctx.dtypes[pair[0]])
                if len(pair) > 1:
                    grads[pair[1]] = out2.to(ctx.dtypes[pair[1]])
            if needs[3]:
                grads[3] = 2.0 * grad_rows[:, None] * \
                    torch.ops.ddm_fast.affine_dots_triton(
                        x0, x1, x2, None, coeffs, mask, ctx.seed, ctx.offset,
                        ctx.bias, 2)
        else:
            # d/dx_k sum v = g c_k on valid elements: a per-row constant
            rows = coeffs.shape[0]
            numel = 1
            for s in ctx.shape:
                numel *= s
            for k in columns:
                value = (grad_rows * coeffs[:, k]).to(ctx.dtypes[k])
                value = value[:, None].expand(rows, numel // rows).reshape(ctx.shape)
                if mask is not None:
                    value = torch.where(mask != 0, value, 0.0)
                grads[k] = value
            if needs[3]:
                grads[3] = grad_rows[:, None] * \
                    torch.ops.ddm_fast.affine_dots_triton(
                        x0, x1, x2, None, coeffs, mask, ctx.seed, ctx.offset,
                        ctx.bias, 0)
        return tuple(grads)

    _affine_sum_op.register_autograd(_affine_sum_backward,
                                     setup_context=_affine_sum_setup)


# ------------------------------------------------ the backend interface
def _require_available() -> None:
    reason = why_unavailable("triton")
    if reason is not None:
        raise BackendUnavailableError(f"backend 'triton' is unavailable: {reason}")


def _prepare(inputs, coeffs, coeffs2, mask):
    """Contiguous inputs, coefficient tables in the math dtype, kernel mask."""
    _require_available()
    _check_device(inputs[0].device)
    math = _math_dtype(list(inputs) + [coeffs])
    xs = [t.contiguous() for t in inputs] + [None] * (3 - len(inputs))
    coeffs = coeffs.to(math).contiguous()
    if coeffs2 is not None:
        coeffs2 = coeffs2.to(math).contiguous()
    return xs, coeffs, coeffs2, _prepare_mask(mask, inputs[0].shape)


def randn(shape, seed: int, offset: int = 0, dtype=torch.float32, device=None):
    """noise[offset + i] for i < prod(shape) (SPEC §9)."""
    _require_available()
    device = torch.device(device) if device is not None else torch.device("cpu")
    _check_device(device)
    shape = tuple(int(s) for s in shape)
    numel = 1
    for s in shape:
        numel *= s
    return torch.ops.ddm_fast.randn_triton(numel, seed, offset, dtype,
                                           device).reshape(shape)


def affine(inputs, coeffs, mask=None, seed=None, offset=0, coeffs2=None,
           bias=False) -> List[torch.Tensor]:
    """[out] or [out, out2], as :func:`ddm_fast.ops.reference.affine`."""
    xs, coeffs, coeffs2, mask = _prepare(inputs, coeffs, coeffs2, mask)
    out, out2 = torch.ops.ddm_fast.affine_triton(
        xs[0], xs[1], xs[2], coeffs, coeffs2, mask,
        -1 if seed is None else seed, offset, bool(bias))
    return [out, out2] if coeffs2 is not None else [out]


def affine_sum(inputs, coeffs, mask=None, seed=None, offset=0, power=2,
               bias=False) -> torch.Tensor:
    """(rows,), as :func:`ddm_fast.ops.reference.affine_sum`."""
    if power not in (1, 2):
        raise ValueError(f"power must be 1 or 2, got {power!r}")
    xs, coeffs, _, mask = _prepare(inputs, coeffs, None, mask)
    return torch.ops.ddm_fast.affine_sum_triton(
        xs[0], xs[1], xs[2], coeffs, mask, -1 if seed is None else seed,
        offset, int(power), bool(bias))
