"""Matplotlib figures, one function per picture (needs ``pip install 'hesse[plot]'``).

Each topic lives in its own module (``hesse.plot.spectrum``, ``.geometry``, ``.optimize``,
``.diagnostics``, ``.report``); this package re-exports their ``__all__``.
"""

from .diagnostics import *  # noqa: F403
from .diagnostics import __all__ as _diagnostics_all
from .geometry import *  # noqa: F403
from .geometry import __all__ as _geometry_all
from .optimize import *  # noqa: F403
from .optimize import __all__ as _optimize_all
from .report import *  # noqa: F403
from .report import __all__ as _report_all
from .spectrum import *  # noqa: F403
from .spectrum import __all__ as _spectrum_all

__all__ = [*_spectrum_all, *_geometry_all, *_optimize_all, *_diagnostics_all, *_report_all]
