#!/usr/bin/env bash
# The real components the tests start: Prometheus and promtool, Alertmanager and amtool,
# and docker-compose to validate the compose stack (Debian packages). Installs what is missing when we are root on a Debian machine; never
# starts the packages' services.
set -euo pipefail
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v docker-compose >/dev/null || need+=(docker-compose)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing ${need[*]}: install them (apt-get install ${need[*]}) and run again" >&2
  exit 1
fi
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
echo "installing ${need[*]} (Debian packages, services kept stopped)" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
