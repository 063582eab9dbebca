"""Text output shared by the ``fpn-zoo`` command and the repository tools (``tools/``): the one table
formatter, and a progress bar that draws only on a terminal."""
from __future__ import annotations

import shutil
import sys
from typing import Any, List, Optional, Sequence, TextIO

__all__ = ["format_table", "Progress"]


def _markdown_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    align: str = "",
    *,
    markdown: bool = False,
    max_width: Optional[int] = None,
) -> str:
    """A table, as aligned plain text or as a Markdown (GitHub) table.

    Args:
        headers: the column titles.
        rows: one sequence of cells per row (anything ``str`` can show).
        align: one letter per column, ``l`` (default), ``r`` or (Markdown only) ``c``.
        markdown: a Markdown table (cells escaped, alignment in the rule row) instead of plain text.
        max_width: plain text only: cut the last column so a line is at most this long (with ``...``).

    Returns:
        The lines joined by newlines, without a trailing newline.

    Example:
        >>> print(format_table(["neck", "params"], [["fpn", 3], ["pan", 12]], "lr"))
        neck  params
        fpn        3
        pan       12
        >>> print(format_table(["a", "b"], [["x|y", 1]], "lr", markdown=True))
        | a | b |
        | --- | ---: |
        | x\\|y | 1 |
    """
    align = align.ljust(len(headers), "l")
    if markdown:
        rule = ["---:" if a == "r" else ":---:" if a == "c" else "---" for a in align]
        lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
        lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows]
        return "\n".join(lines)
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if max_width is not None:
        fixed = sum(widths[:-1]) + 2 * (len(widths) - 1)
        widths[-1] = max(10, min(widths[-1], max_width - fixed))
    out: List[str] = []
    for r in cells:
        parts = []
        for i, c in enumerate(r):
            if len(c) > widths[i]:
                c = c[: widths[i] - 3] + "..."
            parts.append(c.rjust(widths[i]) if align[i] == "r" else c.ljust(widths[i]))
        out.append("  ".join(parts).rstrip())
    return "\n".join(out)


class Progress:
    """A one-line progress bar on a terminal: ``bench [#######.......] 12/40 fpn_p6p7``.

    It draws (with carriage returns) only when the stream is a terminal: redirected to a file or a pipe, it
    writes nothing, so logs do not fill with frames.

    Args:
        label: the word before the bar.
        enabled: False to never draw (``--quiet``).
        stream: where to draw (default ``sys.stderr``).
    """

    def __init__(self, label: str, enabled: bool = True, stream: Optional[TextIO] = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = enabled and callable(isatty) and bool(isatty())
        self.shown = False

    def __call__(self, done: int, total: int, what: str = "") -> None:
        """Show ``done`` of ``total`` steps, the last one being ``what``."""
        if not self.enabled:
            return
        total = max(total, 1)
        width = 24
        filled = int(width * min(done, total) / total)
        line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what}"
        columns = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r" + line[: columns - 1].ljust(columns - 1))
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        """End the bar's line (if one was drawn)."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False
