"""Linear combinations with per-sample coefficients: how a step is written.

Every sampler step is an affine combination of at most three tensors (the
state, network outputs, an earlier estimate) plus scaled noise, with one
coefficient per sample (docs/math.md, "The coefficient algebra"). A step is
written as that formula on :class:`Combo` objects,

    state, f = Combo.inputs(2)
    x_hat = p * state + q * f
    x_next = scale_s * (rho * state / scale_t + (1 - rho) * x_hat)

and :func:`apply` evaluates the final combination with ONE fused
:func:`ddm_fast.ops.affine` call. The coefficients are (B,) vectors in
float64 (float32 on MPS) whatever the state's dtype; they are cast to the
kernels' math dtype only in :func:`apply`.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import torch

from .. import ops
from ..ops import coefficient_dtype

__all__ = ["Combo", "apply", "NOISE"]

NOISE = -1  # key of the noise term xi (drawn by the kernel from a seed)

Scalar = Union[float, int, torch.Tensor]


class Combo:
    """sum_k c_k * input_k (+ c_xi * xi), c_k per-sample (B,) vectors (or
    Python numbers), keyed by the input's position."""

    __slots__ = ("terms",)

    def __init__(self, terms: Dict[int, Scalar]):
        self.terms = terms

    @staticmethod
    def inputs(n: int):
        """The unit combinations input_0, ..., input_{n-1}."""
        return [Combo({k: 1.}) for k in range(n)]

    @staticmethod
    def noise() -> "Combo":
        """The unit combination of the noise xi."""
        return Combo({NOISE: 1.})

    def __add__(self, other: "Combo") -> "Combo":
        terms = dict(self.terms)
        for key, value in other.terms.items():
            terms[key] = terms[key] + value if key in terms else value
        return Combo(terms)

    def __neg__(self) -> "Combo":
        return Combo({k: -v for k, v in self.terms.items()})

    def __sub__(self, other: "Combo") -> "Combo":
        return self + (-other)

    def __mul__(self, factor: Scalar) -> "Combo":
        return Combo({k: v * factor for k, v in self.terms.items()})

    __rmul__ = __mul__

    def __truediv__(self, divisor: Scalar) -> "Combo":
        return Combo({k: v / divisor for k, v in self.terms.items()})

    @staticmethod
    def where(condition: torch.Tensor, a: "Combo", b: "Combo") -> "Combo":
        """Per sample: combination ``a`` where ``condition``, else ``b``."""
        terms = {}
        for key in set(a.terms) | set(b.terms):
            terms[key] = torch.where(condition, _as_vector(a.terms.get(key, 0.),
                                                           condition),
                                     _as_vector(b.terms.get(key, 0.),
                                                condition))
        return Combo(terms)

    def table(self, n_inputs: int, batch: int, like: torch.Tensor,
              with_noise: bool) -> torch.Tensor:
        """(B, n_inputs [+ 1]) coefficient table in the kernels' dtype."""
        keys = list(range(n_inputs)) + ([NOISE] if with_noise else [])
        dtype = coefficient_dtype(like)
        columns = []
        for key in keys:
            value = self.terms.get(key, 0.)
            if not isinstance(value, torch.Tensor):
                value = torch.full((batch,), float(value), dtype=dtype,
                                   device=like.device)
            columns.append(value.to(dtype).expand(batch))
        return torch.stack(columns, 1)


def _as_vector(value: Scalar, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.full(like.shape, float(value), dtype=torch.float64,
                      device=like.device)


def apply(combo: Combo, inputs: Sequence[torch.Tensor],
          mask: Optional[torch.Tensor] = None, *,
          noise_seed: Optional[int] = None, noise_offset: int = 0,
          also: Optional[Combo] = None):
    """Evaluate ``combo`` over ``inputs`` (and the noise stream
    ``noise_seed`` at ``noise_offset`` when the combination has a noise
    term and a seed is given) in one fused op; with ``also``, a second
    combination of the same loads is returned as well: ``(out, out_also)``.
    Masked positions are 0."""
    batch = inputs[0].shape[0]
    with_noise = noise_seed is not None
    if NOISE in combo.terms and not with_noise:
        raise ValueError("the step has a noise term but no noise seed")
    table = combo.table(len(inputs), batch, inputs[0], with_noise)
    table2 = None if also is None else \
        also.table(len(inputs), batch, inputs[0], with_noise)
    return ops.affine(list(inputs), table, mask, noise_seed, noise_offset,
                      coeffs2=table2)
