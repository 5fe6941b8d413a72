"""Does a stored per-bead table (a Z-LUT, a force calibration) belong to the beads
tracked now?

The tracker applies a Z-LUT by bead id, and ``Force`` scales a bead's force by bead id:
a table made on another flow cell, or before the ROI table was rebuilt, silently gives
bead 3 the table of some other bead 3. :func:`match_beads` compares the bead ids and ROI
positions (top-left corner, px) stored with the run against the tracker's ROI table;
:meth:`BeadMatch.summary` says which bead gets which table, and
:meth:`BeadMatch.problems` why the table does not fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_ROI_SHIFT_PX", "BeadMatch", "id_ranges", "match_beads", "rois_metadata"]

#: A bead whose ROI moved farther than this (px) since the table was made is taken for
#: another bead (the XY lock moves ROIs by a few px; another flow cell by hundreds).
MAX_ROI_SHIFT_PX = 10.0


def rois_metadata(rois: Any, bead_ids: Iterable[int] | None = None) -> dict[str, list[int]]:
    """The ROI table (of ``bead_ids`` only, if given) as start-document metadata:
    ``{"bead_id": [...], "x0_px": [...], "y0_px": [...]}``."""
    ids = np.asarray(rois.bead_id, dtype=np.int64)
    keep = np.ones(ids.size, bool) if bead_ids is None else np.isin(ids, list(bead_ids))
    return {
        "bead_id": [int(b) for b in ids[keep]],
        "x0_px": [int(x) for x in np.asarray(rois.x0_px)[keep]],
        "y0_px": [int(y) for y in np.asarray(rois.y0_px)[keep]],
    }


def id_ranges(ids: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 7, 9, 10]`` as ``"0-3, 7, 9-10"``."""
    values = sorted({int(b) for b in ids})
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ", ".join(parts) if parts else "none"


def _beads(ids: list[int]) -> str:
    return f"bead {ids[0]}" if len(ids) == 1 else f"beads {id_ranges(ids)}"


@dataclass(frozen=True)
class BeadMatch:
    """How the beads of a stored table map onto the current ROI table (by bead id).

    ``same``: ids in both whose ROI is within ``max_shift_px`` of where it was;
    ``moved``: ids in both whose ROI is farther (bead id -> distance, px); ``no_table``:
    current beads the table lacks; ``unused``: table beads no longer tracked;
    ``positions_known``: the run recorded ROI positions (older runs did not).
    """

    what: str
    table_ids: tuple[int, ...]
    current_ids: tuple[int, ...]
    same: tuple[int, ...]
    moved: Mapping[int, float]
    no_table: tuple[int, ...]
    unused: tuple[int, ...]
    positions_known: bool
    max_shift_px: float

    @property
    def ok(self) -> bool:
        """Every current bead has a table, made for a bead at its position."""
        return not self.moved and not self.no_table and bool(self.current_ids)

    def problems(self) -> str:
        """Why the table does not fit the current beads (one line; "" when it does)."""
        out = []
        if not self.current_ids:
            out.append("the tracker's ROI table is empty")
        if self.moved:
            d = list(self.moved.values())
            out.append(
                f"{_beads(list(self.moved))} of the current ROI table sat "
                f"{min(d):.0f}-{max(d):.0f} px away when {self.what} was made (another "
                "flow cell or bead selection?)"
            )
        if self.no_table:
            out.append(f"{_beads(list(self.no_table))} have no table in it")
        return "; ".join(out)

    def summary(self) -> str:
        """Which current bead gets which table (a few lines)."""
        lines = [
            f"{self.what} (beads {id_ranges(self.table_ids)}) on the ROI table "
            f"(beads {id_ranges(self.current_ids)}):"
        ]
        if self.same:
            where = (
                f"ROIs within {self.max_shift_px:g} px of where they were"
                if self.positions_known
                else "the run recorded no ROI positions: matched by id only"
            )
            lines.append(f"  {_beads(list(self.same))}: their own tables ({where})")
        if self.moved:
            d = list(self.moved.values())
            lines.append(
                f"  {_beads(list(self.moved))}: the tables of the beads with these ids, "
                f"whose ROIs were {min(d):.0f}-{max(d):.0f} px away (not the same beads)"
            )
        if self.no_table:
            lines.append(f"  {_beads(list(self.no_table))}: no table")
        if self.unused:
            lines.append(f"  unused tables of beads no longer tracked: {id_ranges(self.unused)}")
        return "\n".join(lines)


def match_beads(
    what: str,
    table_ids: Iterable[int],
    current_rois: Any,
    table_rois: Mapping[str, Any] | None,
    *,
    max_shift_px: float = MAX_ROI_SHIFT_PX,
) -> BeadMatch:
    """Compare a table's beads (``table_ids``; their ROIs ``table_rois`` as written by
    :func:`rois_metadata`, or None when the run did not record them) with the current ROI
    table ``current_rois`` (a ``BeadRois``)."""
    table = [int(b) for b in table_ids]
    current = [int(b) for b in np.asarray(current_rois.bead_id)]
    now = {
        int(b): (float(x), float(y))
        for b, x, y in zip(
            current, np.asarray(current_rois.x0_px), np.asarray(current_rois.y0_px), strict=True
        )
    }
    then: dict[int, tuple[float, float]] | None = None
    if table_rois is not None:
        then = {
            int(b): (float(x), float(y))
            for b, x, y in zip(
                table_rois["bead_id"], table_rois["x0_px"], table_rois["y0_px"], strict=True
            )
        }
    same: list[int] = []
    moved: dict[int, float] = {}
    for b in current:
        if b not in table:
            continue
        if then is None or b not in then:
            same.append(b)
            continue
        (x1, y1), (x0, y0) = now[b], then[b]
        shift = float(np.hypot(x1 - x0, y1 - y0))
        if shift <= max_shift_px:
            same.append(b)
        else:
            moved[b] = shift
    return BeadMatch(
        what=what,
        table_ids=tuple(table),
        current_ids=tuple(current),
        same=tuple(same),
        moved=moved,
        no_table=tuple(b for b in current if b not in table),
        unused=tuple(b for b in table if b not in now),
        positions_known=then is not None,
        max_shift_px=float(max_shift_px),
    )
