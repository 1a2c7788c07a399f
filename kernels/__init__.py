"""Triton kernels of ddm_fast, installed as ``ddm_fast.kernels``.

- :mod:`.common`      the noise (Philox words of ``tl.randint4x``, four
                      normals per counter), the tiles, the mask lookup, the
                      affine combination, the launch configurations.
- :mod:`.randn`       counter-based normal noise (docs/math.md,
                      "Counter-based noise").
- :mod:`.affine`      the element-wise affine step, optional second output.
- :mod:`.affine_sum`  deterministic two-stage per-row reductions (the loss,
                      the masked mean, the coefficient gradients).
- :mod:`.aot`         ahead-of-time compilation of every launch variant to
                      sm_80/sm_90 cubins without a GPU (registers, spills,
                      occupancy) and the static instruction ceilings.
- :mod:`.check_sincos` the exhaustive accuracy check of the noise's sine
                      and cosine (NumPy, minutes).

Importing this package needs Triton; ``ddm_fast/backends/triton_kernels.py``
launches the kernels (wrapped for ``torch.library.triton_op``) and is the
only caller. Under ``TRITON_INTERPRET=1`` (set before Triton is imported)
the kernels run in Triton's interpreter with one big tile per program.
kernels/README.md documents the design, the launch configurations, the
measurements and the supported Triton versions.
"""
