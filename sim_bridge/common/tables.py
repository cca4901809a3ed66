"""Result tables as GitHub markdown, so a printed table pastes into a report or a PR as it is."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """One markdown table: `header`, then each row's cells as text (None as "-")."""
    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join("-" if c is None else str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + " --- |" * len(header), *(line(r) for r in rows)])
