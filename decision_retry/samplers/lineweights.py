"""Cut weights that know where the failing tests point: the shown functions' suspicious lines.

The coverage spectrum (localise/spectrum.py) scores every line the selected tests ran by Ochiai.
Inside one function, the lines at its best score are where the bug most likely is: run by the
failing tests and by the fewest passing ones. Their texts are *suspicious*, and a reply token
whose line, stripped, equals a suspicious text gets its cut weight times `line_weight`
(`RetryConfig`). A reply that copies the buggy function copies that line, so the bug token among
its tokens gains cut mass against the lines the failing tests did not run (other branches, the
signature, the docstring) and, where the spectrum tells the run lines apart, against the less
suspicious ones; a line the reply rewrote matches nothing. On real-repos the best lines hold the
planted bug in 31 of 33 cases, and are fewer than the lines the failing tests ran in 5
(benchmarks/line_spectrum.py): mostly, the failing tests alone run the function.

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
    """The stripped texts of the best lines of each shown suspect; `evidence` is each
    candidate's by `Suspect.key` (rank.py: `best_lines`). Sorted, blank lines left out."""
    out: set[str] = set()
    for s in shown:
        best = (evidence.get(s.key) or {}).get("best_lines") or []
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
