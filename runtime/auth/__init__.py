"""Authentication and authorisation of write requests: static tokens, CI identity tokens
(OIDC trusted publishing), roles and scopes. See :mod:`runtime.auth.authorizer`.

The names below load on first use (PEP 562), so that the CLI's ``token`` command, which lives in
this package, costs a client-only install no server dependency (tests/test_cli_help.py).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {"Authorizer": ".authorizer", "Principal": ".principal", "Token": ".tokens",
            "load_tokens": ".tokens"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
