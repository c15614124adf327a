"""Text for the page's Markdown: escaping, plurals, errors.

Paths, class names, file ids and error reasons come from users' folders and uploads;
in Markdown `root/cats/*.jpg, root/dogs/*.jpg` would turn into italics and a name with
`[...](...)` into a link, so every such string is escaped. Glyphs are ones Debian's
default fonts (DejaVu) have: emoji such as ❌ show as empty boxes there
(tests/test_ui_workflow.py renders every glyph the UI uses in Chromium)."""

from __future__ import annotations

from ..errors import RetrievalAppError

# ASCII punctuation that Markdown (CommonMark / GFM, as Gradio renders it) may act on;
# CommonMark lets every one of them be escaped with a backslash.
_MARKDOWN_SPECIAL = set("\\`*_{}[]()#+-.!|<>~$&:")


def md_escape(text: object) -> str:
    """`text` shown literally in Markdown."""
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in str(text))


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """"1 image", "2 images", "1 class", "3 classes"."""
    if count == 1:
        return f"{count:,} {noun}"
    return f"{count:,} {plural_form or noun + 's'}"


def error_text(exc: BaseException) -> str:
    """One line for the page: the app's own errors as they are, others with their type."""
    message = str(exc) if isinstance(exc, RetrievalAppError) else f"{type(exc).__name__}: {exc}"
    return f"**Error:** {md_escape(message)}"
