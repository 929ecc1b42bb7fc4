"""Report text: HTML pages from Jinja2 templates in ``schemas/defaults/templates/`` (autoescaped), not
f-strings, and markdown tables from ``DataFrame.to_markdown`` (tabulate), not hand-joined pipes."""

from __future__ import annotations

from collections.abc import Collection
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from schemas.settings import DEFAULTS_DIR

TEMPLATES_DIR = DEFAULTS_DIR / "templates"


@lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    return Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=select_autoescape(["html", "j2"]),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render(template: str, **values: Any) -> str:
    """Render a template; values marked safe with ``|safe`` in the template are pre-built HTML
    (pandas tables, base64 images), everything else is escaped."""
    return _environment().get_template(template).render(**values)


def markdown_table(frame: pd.DataFrame, floatfmt: str = ",.2f", intfmt: str = "",
                   right: Collection[str] = ()) -> str:
    """A GitHub markdown table of ``frame`` without its index, or ``_none_`` when it has no rows.

    Numeric columns are right-aligned and formatted with ``floatfmt``/``intfmt`` (tabulate format specs).
    Text columns are shown as they are (tabulate would otherwise read "00123" as the number 123), with "|"
    shown as "/" so no value splits its cell; ``right`` right-aligns text columns holding pre-formatted
    numbers ("12.0%"). Missing values are empty cells.
    """
    import pandas as pd

    if frame.empty:
        return "_none_\n"
    numeric = [pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in frame.dtypes]

    def shown(value: Any, number: bool) -> Any:
        if pd.api.types.is_scalar(value) and pd.isna(value):
            return None
        return value if number else str(value).replace("|", "/")

    cells = pd.DataFrame([[shown(v, n) for v, n in zip(row, numeric, strict=True)]
                          for row in frame.itertuples(index=False)], columns=frame.columns, dtype=object)
    align = ["right" if n or c in right else "left" for c, n in zip(frame.columns, numeric, strict=True)]
    return cells.to_markdown(index=False, floatfmt=floatfmt, intfmt=intfmt, missingval="", colalign=align,
                             disable_numparse=[i for i, n in enumerate(numeric) if not n]) + "\n"
