"""Where templates/ and migrations/ are: inside the package when installed from a wheel, at the
top of the repository in a checkout (and in an editable install)."""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # app/


def _find(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"cannot find the {name}/ directory next to {_PACKAGE}")


TEMPLATES = _find("templates")
MIGRATIONS = _find("migrations")
