"""``JSONResponse`` whose body ends with a newline.

Every JSON answer of the API is read by people as often as by programs: ``curl`` prints the
body as it is, and without a final newline the shell prompt lands on the same line as the
answer. JSON parsers ignore the trailing whitespace. The modules that answer JSON import this
class instead of Starlette's.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse as _StarletteJSONResponse


class JSONResponse(_StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return super().render(content) + b"\n"
