"""HTML pages from Jinja2 templates in ``schemas/defaults/templates/`` (autoescaped), not f-strings."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

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
