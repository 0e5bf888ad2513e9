"""The project's JSON parser for DRF (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES).

Kept apart from vocoeng.api: DRF imports this while building APIView, so it
must not import DRF's views or routers itself.
"""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

from .routing import nul_replace


class JSONParser(parsers.JSONParser):
    """Parse JSON as DRF does; too deep a nesting is a 400, NULs become U+FFFD.

    Python's json recurses per nesting level: ``[[[...]]]`` 10,000 deep raises
    RecursionError, which DRF does not catch (a 500). NULs: see decode_json.
    """

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply") from exc
        return nul_replace(data)
