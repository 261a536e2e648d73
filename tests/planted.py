"""A pickle that proves it was executed: unpickling a :class:`Planted` creates its marker file."""

from __future__ import annotations


class Planted:
    """Unpickling this creates ``marker``: proof that a loader executed code from a checkpoint folder."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))
