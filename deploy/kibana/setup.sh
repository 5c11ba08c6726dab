#!/bin/sh
# Import the esindexer data view, saved search and dashboard into Kibana.
#
# Run once by the `kibana-setup` compose service (curl image: POSIX sh, curl, grep; no
# jq, no bash), or by hand:  KIBANA_URL=http://127.0.0.1:5601 deploy/kibana/setup.sh
#
# Idempotent: `overwrite=true` replaces the objects by id on every run. Exits non-zero
# unless Kibana answers the import with "success": true. HTTP 200 alone is not enough:
# an import with conflicts or missing references is also a 200.
set -eu

KIBANA_URL="${KIBANA_URL:-http://localhost:5601}"
KIBANA_WAIT_SECONDS="${KIBANA_WAIT_SECONDS:-300}"
OBJECTS="${KIBANA_OBJECTS:-$(dirname "$0")/objects.ndjson}"
# Optional basic auth for a Kibana with security on (the demo has it off).
AUTH=""
if [ -n "${KIBANA_USERNAME:-}" ]; then
    AUTH="${KIBANA_USERNAME}:${KIBANA_PASSWORD:-}"
fi

kcurl() {
    if [ -n "$AUTH" ]; then
        curl -sS --user "$AUTH" "$@"
    else
        curl -sS "$@"
    fi
}

echo "kibana-setup: waiting for Kibana at $KIBANA_URL (up to ${KIBANA_WAIT_SECONDS}s)"
waited=0
until kcurl -f "$KIBANA_URL/api/status" 2>/dev/null | grep -q '"level":"available"'; do
    if [ "$waited" -ge "$KIBANA_WAIT_SECONDS" ]; then
        echo "kibana-setup: Kibana at $KIBANA_URL is not available after ${KIBANA_WAIT_SECONDS}s" >&2
        exit 1
    fi
    sleep 2
    waited=$((waited + 2))
done

echo "kibana-setup: importing $OBJECTS"
response="$(kcurl -X POST "$KIBANA_URL/api/saved_objects/_import?overwrite=true" \
    -H 'kbn-xsrf: esindexer-setup' --form "file=@$OBJECTS")" || {
    echo "kibana-setup: import request failed" >&2
    exit 1
}

if printf '%s' "$response" | grep -Eq '"success"[[:space:]]*:[[:space:]]*true'; then
    count="$(printf '%s' "$response" | grep -Eo '"successCount"[[:space:]]*:[[:space:]]*[0-9]+' | grep -Eo '[0-9]+$' || true)"
    echo "kibana-setup: imported ${count:-?} objects (dashboard: 'ZODB: esindexer overview')"
    exit 0
fi
echo "kibana-setup: import did not succeed; Kibana answered:" >&2
printf '%s\n' "$response" >&2
exit 1
