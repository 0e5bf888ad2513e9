"""Check tool argument schemas and the arguments a model sends against them."""

from __future__ import annotations

from typing import Any

import jsonschema


def schema_problem(schema: Any) -> str:
    """Return why ``schema`` cannot describe a tool's arguments, or ''."""
    if not isinstance(schema, dict):
        return "must be a JSON object (a JSON Schema)"
    if schema.get("type") != "object":
        return 'must be an object schema ({"type": "object", ...})'
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        return f"not a valid JSON Schema: {exc.message}"
    return ""


def build_validator(schema: dict[str, Any]) -> Any:
    """Return a validator for ``schema``; raise ValueError when it is unusable.

    Built once per tool: checking the schema itself costs milliseconds, far
    more than validating one call's arguments.
    """
    problem = schema_problem(schema)
    if problem:
        raise ValueError(f"tool parameters {problem}")
    return jsonschema.validators.validator_for(schema)(schema)


def arguments_problem(validator: Any, arguments: Any) -> str:
    """Return the best reason ``arguments`` fail ``validator``, or ''."""
    if not isinstance(arguments, dict):
        return "arguments must be a JSON object"
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is None:
        return ""
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message}"
