"""How the command line prints: tables on a terminal, tab-separated lines in a pipe, JSON on
request (one class, shared by every command's module), and counts in words (:func:`plural`).

With ``--json``, standard output holds only answers (JSON), and an error is one JSON object on
standard error, ``{"error": ..., "hint": ..., "exit_code": ...}`` (the control API's shape),
with the same exit code as without ``--json``: a script reads the answer from one stream and
the failure from the other, even when a command prints both (``status --wait`` that times out).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .terminal import json_visible, visible


class _Console(Console):
    """A rich Console that lets a closed pipe be a BrokenPipeError like any other write's:
    rich's own handling exits with code 1 (as if the command had found a problem), where
    ``commonsync`` ends every closed pipe the same way (:func:`commonsyncd.cli.main`)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


class Output:
    """Tables in a terminal, tab-separated lines in a pipe, JSON on request.

    Much of what is printed was chosen by others (file names, labels, device names, error
    details): every line and cell goes through :func:`~commonsyncd.terminal.visible`, and
    nothing is read as rich markup or emoji codes."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        self.console = _Console(highlight=False, soft_wrap=True, emoji=False)
        self.errors = _Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

    @property
    def rich(self) -> bool:
        return self.console.is_terminal and not self.json

    def data(self, value: Any) -> None:
        print(json_visible(json.dumps(value, indent=1, ensure_ascii=False)))

    def line(self, text: str) -> None:
        self.console.print(visible(text, keep_lines=True), markup=False)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.rich:
            table = Table(title=title, title_justify="left")
            for column in columns:
                table.add_column(column)
            for row in rows:
                table.add_row(*[c if isinstance(c, ProgressBar) else Text(visible(c)) for c in row])
            self.console.print(table)
            return
        for row in rows:
            print("\t".join("" if isinstance(c, ProgressBar) else visible(c) for c in row))

    def error(self, message: str, hint: str = "", *, exit_code: int | None = None) -> None:
        if self.json:
            error: dict[str, Any] = {"error": message, "hint": hint}
            if exit_code is not None:
                error["exit_code"] = exit_code
            print(json_visible(json.dumps(error, ensure_ascii=False)), file=sys.stderr)
            return
        self.errors.print(f"commonsync: {visible(message, keep_lines=True)}", markup=False)
        if hint:
            self.errors.print(f"hint: {visible(hint, keep_lines=True)}", markup=False)


def plural(count: int, singular: str, plural_form: str = "") -> str:
    """``1 file``, ``2 files``, ``0 files``: a count with its noun in the right number
    (``plural_form`` for nouns that do not just take an s: ``plural(n, "copy", "copies")``)."""
    return f"{count} {singular if count == 1 else plural_form or singular + 's'}"
