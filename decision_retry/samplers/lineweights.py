"""Cut weights that know where the failing tests point: the shown functions' suspicious lines.

The coverage spectrum (localise/spectrum.py) scores every line the selected tests ran by Ochiai.
Inside one function, the lines at its best score are where the bug most likely is: run by the
failing tests and by the fewest passing ones. Where a shown suspect's best lines are fewer than
the lines its failing tests ran (the spectrum tells them apart), their texts are *suspicious*,
and a reply token whose line, stripped, equals a suspicious text gets its cut weight times
`line_weight` (`RetryConfig`). A reply that copies the buggy function copies that line, so the
bug token among its tokens gains cut mass; a line the reply rewrote matches nothing.

The texts are fixed for the run (built once from the localisation, which the run records with
its first turn, so a resume builds the same set), so the multiplier is a function of the
sequence alone, computed for x and for the proposal alike, and the cut correction of design.md
§2 stays the exact reverse-move ratio (cuts.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence

from decision_retry.localise.code import Suspect


def suspicious(shown: Iterable[Suspect], evidence: Mapping[str, Mapping]) -> tuple[str, ...]:
    """The stripped texts of the best lines of each shown suspect whose best lines are fewer than
    the lines its failing tests ran; `evidence` is each candidate's by `Suspect.key` (rank.py:
    `best_lines`, `failing_lines`). Sorted, blank lines left out."""
    out: set[str] = set()
    for s in shown:
        ev = evidence.get(s.key) or {}
        best, ran = ev.get("best_lines") or [], ev.get("failing_lines") or 0
        if not best or len(best) >= ran:
            continue
        lines = s.source.splitlines()
        out |= {lines[n - s.start].strip() for n in best if 0 <= n - s.start < len(lines)}
    return tuple(sorted(out - {""}))


def scale(texts: Sequence[str], lines: Iterable[str], weight: float) -> list[float]:
    """Per token: `weight` where the token's line (that of its first non-blank character; a
    blank token's, where it starts) stripped is among `lines`, else 1."""
    text = "".join(texts)
    rows = text.split("\n")
    starts = [0]
    for row in rows[:-1]:
        starts.append(starts[-1] + len(row) + 1)
    wanted = set(lines)
    hit = [row.strip() in wanted for row in rows]
    out, pos = [], 0
    for piece in texts:
        lead = len(piece) - len(piece.lstrip())
        c = pos + (lead if lead < len(piece) else 0)
        out.append(weight if hit[bisect.bisect_right(starts, c) - 1] else 1.0)
        pos += len(piece)
    return out
