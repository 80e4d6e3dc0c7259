#!/usr/bin/env bash
# The real components the tests start: Prometheus and promtool, Alertmanager and amtool,
# and docker-compose to validate the compose stack (Debian packages). Installs what is
# missing when we are root on a Debian machine; never starts the packages' services.
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
[ ${#need[@]} -eq 0 ] && exit 0
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
