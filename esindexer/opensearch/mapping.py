"""OpenSearch's dialect of esindexer's index template.

The template is built once, for Elasticsearch (:func:`esindexer.es.admin.index_template`);
:func:`opensearch_template` rewrites the few parts OpenSearch does not accept. Each
rewrite was checked against a real OpenSearch 3.3.0 node (it refuses the original with
the error quoted), and docs/opensearch.md says what each costs:

================================================  =========================================
Elasticsearch                                     OpenSearch
================================================  =========================================
``flattened`` with ``depth_limit``/``ignore_above``  ``flat_object`` (no parameters: "No handler
                                                  for type [flattened]", and flat_object
                                                  refuses both parameters)
``subobjects: false`` on ``state``/``fields``     left out ("unsupported parameters:
                                                  [subobjects : false]"): dotted paths become
                                                  objects, so a path that is a leaf in one
                                                  document and a parent in another is a
                                                  mapping conflict, refused as a dead letter
``index.mapping.total_fields.ignore_dynamic_      left out ("unknown setting"): a document
beyond_limit``                                    that would pass the field limit is refused
``path_match`` with a list of patterns            one dynamic template per pattern (the list
                                                  form is newer than the 7.10 fork; 3.x takes
                                                  it, 2.x does not promise to)
================================================  =========================================

The template's ``_meta.state_mapping`` names the model either way, so an index's model is
read back from it where the mapping itself no longer shows it (no ``subobjects``).
"""

from __future__ import annotations

import copy
from typing import Any

#: Index settings OpenSearch does not know (it refuses the whole index creation).
_UNKNOWN_SETTINGS = ("index.mapping.total_fields.ignore_dynamic_beyond_limit",)


def opensearch_field(mapping: dict[str, Any]) -> dict[str, Any]:
    """One field's mapping in OpenSearch's terms (recursively through properties)."""
    if mapping.get("type") == "flattened":
        return {"type": "flat_object"}
    out = {k: v for k, v in mapping.items() if k != "subobjects"}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {name: opensearch_field(field) for name, field in out["properties"].items()}
    return out


def _dynamic_templates(templates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dynamic templates with one ``path_match`` pattern each, in the same order (the first
    match wins, so a list expanded in place matches exactly what it matched before)."""
    out: list[dict[str, Any]] = []
    for entry in templates:
        for name, template in entry.items():
            patterns = template.get("path_match")
            mapping = opensearch_field(template["mapping"]) if "mapping" in template else None
            if isinstance(patterns, list):
                for pattern in patterns:
                    one = {**template, "path_match": pattern, **({"mapping": mapping} if mapping else {})}
                    out.append({f"{name}_{pattern.split('.')[0]}": one})
            else:
                out.append({name: {**template, **({"mapping": mapping} if mapping else {})}})
    return out


def opensearch_template(template: dict[str, Any]) -> dict[str, Any]:
    """The composable index template ``template`` (Elasticsearch's) as OpenSearch accepts it."""
    out = copy.deepcopy(template)
    body = out["template"]
    body["settings"] = {k: v for k, v in body.get("settings", {}).items() if k not in _UNKNOWN_SETTINGS}
    mappings = body.get("mappings", {})
    if isinstance(mappings.get("properties"), dict):
        mappings["properties"] = {name: opensearch_field(field) for name, field in mappings["properties"].items()}
    if "dynamic_templates" in mappings:
        mappings["dynamic_templates"] = _dynamic_templates(mappings["dynamic_templates"])
    return out
