"""Bodies checked against the published OpenAPI document's schemas.

The document (``siprecd/api/openapi.yaml``, as shipped) is OpenAPI 3.0,
whose schemas are JSON Schema with a few additions a validator ignores;
a component schema is validated as a JSON Schema whose references point
into the document's ``components``.
"""

from importlib import resources

import jsonschema_rs
import yaml

__all__ = ["document", "validator", "problems"]

_VALIDATORS = {}


def document():
    return yaml.safe_load(resources.files("siprecd.api").joinpath("openapi.yaml").read_text())


def validator(component):
    """A validator for ``#/components/schemas/<component>``."""
    if component not in _VALIDATORS:
        components = document()["components"]
        assert component in components["schemas"], f"no schema {component} in the document"
        schema = {"$ref": f"#/components/schemas/{component}", "components": components}
        _VALIDATORS[component] = jsonschema_rs.validator_for(schema, validate_formats=True)
    return _VALIDATORS[component]


def problems(component, instance):
    """What is wrong with *instance* as a *component* (empty when nothing)."""
    return [f"{'/'.join(map(str, e.instance_path)) or '(top)'}: {e.message}"
            for e in validator(component).iter_errors(instance)]
