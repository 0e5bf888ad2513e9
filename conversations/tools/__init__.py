"""Tools the model may call: registered in code (``@tool``) or HTTP endpoints.

Register a Python tool in a module that is imported at start-up (an app's
``AppConfig.ready`` or this package)::

    from conversations.tools import tool

    @tool(description="...", parameters={"type": "object", ...})
    def order_status(*, order_id: str, context: ToolContext) -> dict: ...

HTTP tools are rows of ``conversations.HttpTool`` (admin). A channel enables
tools by name (``AI_TOOLS`` for the default channel).
"""

from __future__ import annotations

from .registry import Tool, ToolContext, python_tool_names, tool, tools_resolve
from .runner import ToolError, ToolResult, tool_invoke

__all__ = [
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolResult",
    "python_tool_names",
    "tool",
    "tool_invoke",
    "tools_resolve",
]

# The built-in tools register themselves on import.
from . import builtin  # noqa: F401
