#!/usr/bin/env bash
# The real components the tests start: Prometheus and promtool, Alertmanager and amtool,
# and docker-compose to validate the compose stack (Debian packages). Installs what is
# missing when we are root on a Debian machine; never starts the packages' services. Then
# Grafana's dashboard JSON schema (below), under .tools/.
#
# Services are kept stopped by a policy-rc.d ("exit 101") for the length of the install only:
# FIX (tests/test_install_tools.py): it was left behind, so every later package's services on
# the host failed to start. Whatever was there before (a file of the host's own, or none) is
# put back on every exit. POLICY_RC_D names the file (tests point it into a temporary dir).
set -euo pipefail
POLICY_RC_D=${POLICY_RC_D:-/usr/sbin/policy-rc.d}
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
  saved=""
  if [ -e "$POLICY_RC_D" ] || [ -L "$POLICY_RC_D" ]; then
    saved=$(mktemp "${POLICY_RC_D}.saved.XXXXXX")
    cp -P -p "$POLICY_RC_D" "$saved"
  fi
  restore_policy() {
    if [ -n "$saved" ]; then
      mv -f "$saved" "$POLICY_RC_D"
    else
      rm -f "$POLICY_RC_D"
    fi
  }
  trap restore_policy EXIT
  trap 'exit 130' INT TERM HUP
  rm -f "$POLICY_RC_D"
  printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC_D"
  chmod +x "$POLICY_RC_D"
  echo "installing ${need[*]} (Debian packages, services kept stopped)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  restore_policy
  trap - EXIT
fi

# Grafana's dashboard schema as JSON Schema, for tests/test_dashboards.py. The npm package
# @grafana/schema publishes it only as TypeScript types (generated from Grafana's CUE kind),
# so ts-json-schema-generator turns its `Dashboard` type into JSON Schema. Pinned versions;
# skipped when that version's schema is already there; nothing outside .tools/grafana-schema.
GRAFANA_SCHEMA=13.2.3
TS_JSON_SCHEMA_GENERATOR=2.10.0
dir="${GRAFANA_SCHEMA_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.tools/grafana-schema}"
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
