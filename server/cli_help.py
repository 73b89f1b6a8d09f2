"""The one help formatter of the project's commands: the description as written, and every
option's default shown (``(default: X)``) unless the help text already says it or there is
none (None, False)."""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``formatter_class`` of every ``argparse.ArgumentParser`` in the project."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or action.option_strings == []
            or isinstance(default, list)
            and not default
        ):
            return text
        return f"{text} (default: {default})" if text else f"(default: {default})"
