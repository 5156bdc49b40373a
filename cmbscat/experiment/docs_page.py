"""Write a pipeline's results table into the documentation page that reports it.

A page (Markdown) marks the block that a command's table fills::

    <!-- table:begin results/paper_table.md -->
    ... (rewritten by the pipeline; edit the page around it, not inside) ...
    <!-- table:end -->

The path after ``table:begin`` is the table file the pipeline writes (the config's
``"table"``, or a scan's ``<out>/<fnl|gnl>_scan.md``), as written in the config, so
that a page can hold the blocks of several commands. An experiment config names its
page with ``"docs_page"``; the pipeline then replaces the block's content with the
table it has just written, so the page's current table is always the command's own
output, never a hand copy.
"""

from __future__ import annotations

import re
from pathlib import Path

from cmbscat.errors import CmbscatError
from cmbscat.store import atomic_write_text

BEGIN = "<!-- table:begin {source} -->"
END = "<!-- table:end -->"


def _block_pattern(source: str) -> re.Pattern:
    return re.compile(re.escape(BEGIN.format(source=source)) + r"\n.*?" + re.escape(END), re.S)


def replace_table(page_text: str, source: str, table_text: str) -> str:
    """``page_text`` with the block marked for ``source`` holding ``table_text``.

    The table's own first-level title (``# ...``), if any, is dropped: the page has
    its own headings. Raises :class:`CmbscatError` if the page has no such block, or
    more than one.
    """
    pattern = _block_pattern(source)
    found = pattern.findall(page_text)
    if len(found) != 1:
        raise CmbscatError(f"the page has {len(found)} blocks marked "
                           f"'{BEGIN.format(source=source)}' (needs exactly one)")
    lines = table_text.strip("\n").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    body = "\n".join(lines).strip("\n")
    block = f"{BEGIN.format(source=source)}\n{body}\n{END}"
    return pattern.sub(lambda _: block, page_text)


def check_page(page: str | Path, source: str) -> None:
    """Refuse, before anything runs, a ``"docs_page"`` that is missing or lacks exactly one
    block marked for ``source`` (so that hours of work do not end in that error)."""
    page = Path(page)
    if not page.exists():
        raise CmbscatError(f"docs page {page} (the config's \"docs_page\") does not exist")
    found = len(_block_pattern(source).findall(page.read_text()))
    if found != 1:
        raise CmbscatError(f"{page}: the page has {found} blocks marked "
                           f"'{BEGIN.format(source=source)}' (needs exactly one)")


def write_into_page(page: str | Path, source: str, table: str | Path) -> None:
    """Replace, in the Markdown file ``page``, the block marked for ``source`` by the
    content of the table file ``table`` (atomically: the page is never half-written)."""
    page = Path(page)
    if not page.exists():
        raise CmbscatError(f"docs page {page} (the config's \"docs_page\") does not exist")
    try:
        text = replace_table(page.read_text(), source, Path(table).read_text())
    except CmbscatError as err:
        raise CmbscatError(f"{page}: {err}") from None
    atomic_write_text(page, text)


def check_config_page(cfg: dict, table: str | Path) -> None:
    """:func:`check_page` for an experiment config's ``"docs_page"`` (none: nothing to check)."""
    if cfg.get("docs_page"):
        check_page(cfg["docs_page"], str(table))


def fill_config_page(cfg: dict, table: str | Path) -> str | None:
    """Write ``table`` into the config's ``"docs_page"``, in the block marked with the
    table's path; returns the page's path, or None for a config without one."""
    page = cfg.get("docs_page")
    if page:
        write_into_page(page, str(table), table)
    return page

