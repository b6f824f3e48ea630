"""Authentication and authorisation of write requests: static tokens, CI identity tokens
(OIDC trusted publishing), roles and scopes. See :mod:`runtime.auth.authorizer`."""

from .authorizer import Authorizer
from .principal import Principal
from .tokens import Token, load_tokens

__all__ = ["Authorizer", "Principal", "Token", "load_tokens"]
