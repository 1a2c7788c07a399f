"""Triton kernels of ddm_fast, installed as ``ddm_fast.kernels``.

Importing this package needs Triton; :mod:`ddm_fast.ops.triton_backend`
imports it only when the ``triton`` backend is used.
"""
