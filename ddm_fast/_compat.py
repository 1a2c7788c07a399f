"""Helpers for staying call-compatible with the ddm_dynamical toolbox.

The toolbox's modules were built from hydra configuration files, which pass
keys a module does not use (``grad_scale`` to a sampler, say); several of its
constructors took and ignored ``**kwargs``. ddm_fast's modules accept them
too, but say once which arguments they ignore instead of dropping them
silently.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Set, Tuple

__all__ = ["warn_ignored_kwargs"]

# (class name, sorted argument names) already warned about in this process
_WARNED: Set[Tuple[str, Tuple[str, ...]]] = set()


def warn_ignored_kwargs(owner: Any, kwargs: Mapping[str, Any],
                        stacklevel: int = 3) -> None:
    """Warn (a UserWarning, once per class and set of names) that ``owner``'s
    constructor ignores the keyword arguments ``kwargs``."""
    if not kwargs:
        return
    names = tuple(sorted(kwargs))
    key = (type(owner).__qualname__, names)
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(f"{type(owner).__name__} ignores the keyword argument(s) "
                  f"{list(names)} (accepted for compatibility with "
                  f"ddm_dynamical configurations)", stacklevel=stacklevel)
