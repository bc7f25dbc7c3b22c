"""How the command line prints: tables on a terminal, tab-separated lines in a pipe, JSON on
request (one class, shared by every command's module)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .terminal import json_visible, visible


class Output:
    """Tables in a terminal, tab-separated lines in a pipe, JSON on request.

    Much of what is printed was chosen by others (file names, labels, device names, error
    details): every line and cell goes through :func:`~commonsyncd.terminal.visible`, and
    nothing is read as rich markup or emoji codes."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        self.console = Console(highlight=False, soft_wrap=True, emoji=False)
        self.errors = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

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

    def error(self, message: str, hint: str = "") -> None:
        self.errors.print(f"commonsync: {visible(message, keep_lines=True)}", markup=False)
        if hint:
            self.errors.print(f"hint: {visible(hint, keep_lines=True)}", markup=False)
