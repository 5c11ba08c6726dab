"""OpenSearch as the engine: its template dialect on a real node, the engine check and
detection (``ESINDEXER_SEARCH_ENGINE``), and the client's answers.

Run by the OpenSearch run of scripts/test (``ESIT_SEARCH_ENGINE=opensearch``, the node at
``ESIT_ES_URL``, the Elasticsearch node at ``ESIT_ELASTICSEARCH_URL``); skipped otherwise.
The rest of esindexer's behaviour on OpenSearch is proved by the same tests as on
Elasticsearch (docs/opensearch.md, *Tests*).
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from elasticsearch import ApiError, NotFoundError

from esindexer.errors import SetupError
from esindexer.es.admin import ensure_indices, index_template, mapping_mode
from esindexer.es.client import engine_of, make_es_client
from esindexer.opensearch.mapping import opensearch_template
from tests.indexing import make_settings
from tests.support import search_engine

opensearch_run = pytest.mark.skipif(search_engine() != "opensearch",
                                    reason="the OpenSearch run of scripts/test (ESIT_SEARCH_ENGINE=opensearch)")


@pytest.mark.parametrize("model", ["typed", "flattened", "dynamic"])
def test_the_dialect_keeps_nothing_opensearch_refuses(model):
    settings = make_settings("postgresql://x/y", "http://127.0.0.1:1", "t-", state_mapping=model)
    text = json.dumps(opensearch_template(index_template(settings)))
    assert '"type": "flattened"' not in text and "subobjects" not in text and "ignore_dynamic_beyond_limit" not in text
    for entry in opensearch_template(index_template(settings))["template"]["mappings"].get("dynamic_templates", []):
        assert all(isinstance(t.get("path_match", ""), str) for t in entry.values())
    assert index_template(settings, "opensearch") == opensearch_template(index_template(settings))


@opensearch_run
@pytest.mark.parametrize("model", ["typed", "flattened", "dynamic"])
def test_each_model_is_created_and_read_back_on_opensearch(model, es, es_url, es_prefix):
    settings = make_settings("postgresql://x/y", es_url, es_prefix, state_mapping=model)
    client = make_es_client(settings)
    assert engine_of(client) == "opensearch"
    indices = ensure_indices(client, settings)
    mappings = es.indices.get_mapping(index=",".join(indices))
    assert {mapping_mode(mappings[index]["mappings"]) for index in indices} == {model}
    # A second start finds the indices and the same model (idempotent).
    assert ensure_indices(client, settings) == indices
    # Writing the other model's documents into them is refused at start, as on Elasticsearch.
    other = "flattened" if model != "flattened" else "typed"
    with pytest.raises(SetupError, match=f"state_mapping={model}"):
        ensure_indices(client, dataclasses.replace(settings, state_mapping=other))
    client.close()


@opensearch_run
def test_auto_detects_each_engine_and_a_wrong_engine_is_a_setup_error(es_url, es_prefix):
    elasticsearch_url = os.environ.get("ESIT_ELASTICSEARCH_URL")
    opensearch = make_settings("postgresql://x/y", es_url, es_prefix, search_engine="auto")
    assert engine_of(make_es_client(opensearch)) == "opensearch"
    # Told it is Elasticsearch, the Elasticsearch client refuses OpenSearch: said at start.
    wrong = dataclasses.replace(opensearch, search_engine="elasticsearch")
    with pytest.raises(SetupError, match="does not lead to Elasticsearch"):
        ensure_indices(make_es_client(wrong), wrong)
    if not elasticsearch_url:
        pytest.skip("ESIT_ELASTICSEARCH_URL not set: the Elasticsearch half needs the Elasticsearch node")
    elastic = dataclasses.replace(opensearch, es_url=(elasticsearch_url,))
    assert engine_of(make_es_client(elastic)) == "elasticsearch"
    told_opensearch = dataclasses.replace(elastic, search_engine="opensearch")
    with pytest.raises(SetupError, match="not lead to OpenSearch|not OpenSearch"):
        ensure_indices(make_es_client(told_opensearch), told_opensearch)


@opensearch_run
def test_answers_and_errors_are_the_elasticsearch_clients(es, es_prefix):
    """What esindexer/es/ relies on: responses with .meta.status and .body, and ApiError
    subclasses carrying the server's error body."""
    index = f"{es_prefix}answers"
    es.indices.create(index=index)
    with pytest.raises(ApiError) as refused:
        es.indices.create(index=index)
    assert refused.value.meta.status == 400 and refused.value.error == "resource_already_exists_exception"
    with pytest.raises(NotFoundError):
        es.get(index=index, id="1")
    lenient = es.options(ignore_status=404).get(index=index, id="1")
    assert lenient.meta.status == 404 and lenient.body["found"] is False
    assert es.indices.exists(index=index) and not es.indices.exists(index=f"{es_prefix}nothing")
    answer = es.bulk(operations=b'{"index":{"_index":"%s","_id":"1","version":5,"version_type":"external_gte"}}\n'
                     b'{"zoid":1}\n{"index":{"_index":"%s","_id":"1","version":4,"version_type":"external_gte"}}\n'
                     b'{"zoid":1}\n' % (index.encode(), index.encode()))
    assert [next(iter(item.values()))["status"] for item in answer["items"]] == [201, 409]
