"""Compatibility path: authorisation lives in :mod:`runtime.auth` now."""

from ..auth import Authorizer, Principal, Token, load_tokens

__all__ = ["Authorizer", "Principal", "Token", "load_tokens"]
