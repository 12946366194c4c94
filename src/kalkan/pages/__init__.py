"""The pages readers see from Kalkan (challenge, block, tarpit, busy, maintenance, 502, 504):
Jinja2 templates in Kyrgyz, Russian and English with the site's name and logo, rendered once.

Imported by the edge and by the defence; imports neither (tests/unit/test_imports.py).
"""

from kalkan.pages.book import FIELDS, KINDS, LOGO_PATH, Logo, Page, Pages, PagesError
from kalkan.pages.language import LANGUAGES, Chooser, negotiate

__all__ = ["FIELDS", "KINDS", "LANGUAGES", "LOGO_PATH", "Chooser", "Logo", "Page", "Pages",
           "PagesError", "negotiate"]
