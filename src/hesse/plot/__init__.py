"""Matplotlib figures, one function per picture (needs ``pip install 'hesse[plot]'``).

Each topic lives in its own module (``hesse.plot.spectrum``, ``.geometry``, ``.optimize``,
``.diagnostics``); this package re-exports their ``__all__``.
"""

import importlib as _importlib

__all__: list[str] = []
for _name in ("spectrum", "geometry", "optimize", "diagnostics"):
    try:
        _mod = _importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _err:  # topic not present in this build
        if _err.name != f"{__name__}.{_name}":
            raise
        continue
    for _sym in getattr(_mod, "__all__", []):
        globals()[_sym] = getattr(_mod, _sym)
        __all__.append(_sym)
