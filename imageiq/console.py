"""The CLI's consoles: results on stdout, errors on stderr (rich)."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
