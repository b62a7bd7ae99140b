"""Text that reaches a person's screen from a client: names and redirect addresses.

Unicode has characters that change how text is shown without being seen themselves: controls
(Cc), format characters such as the bidirectional overrides U+202E and zero-width joiners (Cf),
and line and paragraph separators (Zl, Zp). In a client's name or a redirect URI they let a
registrant make the consent page show something other than what is stored
("reversed" file names, a host hidden after a line break). They are refused, not stripped:
what is stored is what is shown.
"""

from __future__ import annotations

import unicodedata

INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def invisible_character(text: str) -> str | None:
    """The first control, format or separator character in `text`, as U+XXXX, or None."""
    for c in text:
        if unicodedata.category(c) in INVISIBLE:
            return f"U+{ord(c):04X}"
    return None
