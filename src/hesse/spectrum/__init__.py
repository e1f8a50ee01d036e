"""hesse.spectrum (see the README section of the same name). Exports are listed in __all__."""

__all__: list[str] = []
