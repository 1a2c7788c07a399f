"""Linear combinations with per-sample coefficients: how a step is written.

Every sampler step is an affine combination of at most three tensors (the
state, network outputs, an earlier estimate) plus scaled noise, with one
coefficient per sample (docs/math.md, "The coefficient algebra"). A step is
written as that formula on :class:`Combo` objects,

    state, f = Combo.inputs(2, like=lam)
    x_hat = p * state + q * f
    x_next = scale_s * (rho * state / scale_t + (1 - rho) * x_hat)

and :func:`apply` evaluates the final combination with ONE fused
:func:`ddm_fast.ops.affine` call. The coefficients are (B,) vectors in
float64 (float32 on MPS) whatever the state's dtype; they are cast to the
kernels' math dtype only in :func:`apply`.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .. import ops
from ..ops import coefficient_dtype

__all__ = ["Combo", "apply"]

Scalar = Union[float, int, torch.Tensor]


class Combo:
    """sum_k c_k * input_k + c_xi * xi with per-sample coefficients: a
    (B, n_inputs + 1) table, the last column the noise xi's. Arithmetic
    with numbers and per-sample (B,) vectors is one tensor op per operation
    (the step's formula costs a handful of small ops, whatever the number
    of inputs)."""

    __slots__ = ("rows",)

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    @staticmethod
    def inputs(n: int, like: torch.Tensor):
        """The unit combinations input_0, ..., input_{n-1} (and their noise
        column), batch, device and dtype those of the (B,) vector ``like``."""
        eye = torch.eye(n, n + 1, dtype=like.dtype, device=like.device)
        return [Combo(eye[k].expand(like.shape[0], n + 1)) for k in range(n)]

    @staticmethod
    def noise(like: "Combo") -> "Combo":
        """The unit combination of the noise xi, in ``like``'s table."""
        rows = torch.zeros_like(like.rows)
        rows[:, -1] = 1.
        return Combo(rows)

    @staticmethod
    def where(condition: torch.Tensor, a: "Combo", b: "Combo") -> "Combo":
        """Per sample: combination ``a`` where ``condition``, else ``b``."""
        return Combo(torch.where(condition[:, None], a.rows, b.rows))

    def __add__(self, other: "Combo") -> "Combo":
        return Combo(self.rows + other.rows)

    def __neg__(self) -> "Combo":
        return Combo(-self.rows)

    def __sub__(self, other: "Combo") -> "Combo":
        return Combo(self.rows - other.rows)

    def __mul__(self, factor: Scalar) -> "Combo":
        if isinstance(factor, torch.Tensor) and factor.ndim == 1:
            factor = factor[:, None]
        return Combo(self.rows * factor)

    __rmul__ = __mul__

    def __truediv__(self, divisor: Scalar) -> "Combo":
        if isinstance(divisor, torch.Tensor) and divisor.ndim == 1:
            divisor = divisor[:, None]
        return Combo(self.rows / divisor)

    def table(self, n_inputs: int, like: torch.Tensor,
              with_noise: bool) -> torch.Tensor:
        """(B, n_inputs [+ 1]) coefficient table in the kernels' dtype."""
        rows = self.rows[:, :n_inputs]
        if with_noise:
            rows = torch.cat((rows, self.rows[:, -1:]), 1)
        return rows.to(coefficient_dtype(like))


def apply(combo: Combo, inputs: Sequence[torch.Tensor],
          mask: Optional[torch.Tensor] = None, *,
          noise_seed: Optional[int] = None, noise_offset: int = 0,
          also: Optional[Combo] = None):
    """Evaluate ``combo`` over ``inputs`` (plus its noise term, drawn from
    stream ``noise_seed`` at ``noise_offset``, when a seed is given; without
    a seed the noise column is dropped) in one fused op; with ``also``, a
    second combination of the same loads is returned as well:
    ``(out, out_also)``. Masked positions are 0."""
    with_noise = noise_seed is not None
    table = combo.table(len(inputs), inputs[0], with_noise)
    table2 = None if also is None else \
        also.table(len(inputs), inputs[0], with_noise)
    return ops.affine(list(inputs), table, mask, noise_seed, noise_offset,
                      coeffs2=table2)
