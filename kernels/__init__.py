"""Triton kernels of ddm_fast, installed as ``ddm_fast.kernels``.

- :mod:`.common`      the noise tile (one ``tl.randn4x`` per 4 elements), the
                      mask lookup, the affine combination, launch configs.
- :mod:`.randn`       counter-based normal noise (SPEC §9).
- :mod:`.affine`      the element-wise affine step, optional second output.
- :mod:`.affine_sum`  deterministic two-stage per-row reductions (the loss,
                      the masked mean, the coefficient gradients).

Importing this package needs Triton; :mod:`ddm_fast.ops.triton_backend`
wraps the kernels as ``torch.library.triton_op`` and is the only caller.
Under ``TRITON_INTERPRET=1`` (set before Triton is imported) the kernels run
in Triton's interpreter with a single launch configuration.
"""
