#!/usr/bin/env bash
# The real components the tests start: Prometheus and promtool, Alertmanager and amtool,
# and docker-compose to validate the compose stack (Debian packages). Installs what is missing when we are root on a Debian machine; never
# starts the packages' services. Then Grafana's dashboard JSON schema (below), under .tools/.
set -euo pipefail
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing ${need[*]}: install them (apt-get install ${need[*]}) and run again" >&2
    exit 1
  fi
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  echo "installing ${need[*]} (Debian packages, services kept stopped)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Grafana's dashboard schema as JSON Schema, for tests/test_dashboards.py. The npm package
# @grafana/schema publishes it only as TypeScript types (generated from Grafana's CUE kind),
# so ts-json-schema-generator turns its `Dashboard` type into JSON Schema. Pinned versions;
# skipped when that version's schema is already there; nothing outside .tools/grafana-schema.
GRAFANA_SCHEMA=13.2.3
TS_JSON_SCHEMA_GENERATOR=2.10.0
dir="$(cd "$(dirname "$0")/.." && pwd)/.tools/grafana-schema"
if [ "$(cat "$dir/VERSION" 2>/dev/null)" != "$GRAFANA_SCHEMA" ] || [ ! -s "$dir/dashboard.schema.json" ]; then
  echo "installing @grafana/schema@$GRAFANA_SCHEMA's dashboard schema into $dir" >&2
  rm -rf "$dir" && mkdir -p "$dir"
  npm install --prefix "$dir" --cache "$dir/npm-cache" --no-save --no-package-lock --no-audit --no-fund --silent \
    "@grafana/schema@$GRAFANA_SCHEMA" "ts-json-schema-generator@$TS_JSON_SCHEMA_GENERATOR"
  "$dir/node_modules/.bin/ts-json-schema-generator" --no-type-check --type Dashboard \
    --path "$dir/node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts" \
    --out "$dir/dashboard.schema.json.tmp"
  mv "$dir/dashboard.schema.json.tmp" "$dir/dashboard.schema.json"
  echo "$GRAFANA_SCHEMA" > "$dir/VERSION"
fi
