#!/usr/bin/env bash
# The Debian tools deploy/tests run, installed when missing (`make test` calls this first): promtool (package
# prometheus) checks prometheus.yml with Prometheus's own parser; initdb and psql (package postgresql) run the
# compose stack's database init script against a throwaway server. Their packages ship servers that an install
# would start: deploy/apt-install.sh (shared with bench/tools.sh) keeps every service stopped meanwhile. chromium
# (Debian's, not a browser Playwright downloads) is what tests/test_console_browser.py drives.
# Not root, or no apt-get: say what is missing; the tests then fail naming it.
set -uo pipefail
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
{ ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v psql >/dev/null; } || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium)
# The AsyncAPI 3.0 JSON Schema, from npm's @asyncapi/specs (the AsyncAPI initiative's own), checked against its
# pinned digest: cli/tests/test_contracts.py validates contracts/asyncapi.yaml with it. Kept under var/ (ignored).
ASYNCAPI_SPECS_VERSION=6.11.1
ASYNCAPI_SPECS_SHA256=01af8744dc33c0c7eb2e908f6a955319ee58b70ecadc9387d1aeb16c0cd28928
specs=var/tools/asyncapi-specs-$ASYNCAPI_SPECS_VERSION
if [ ! -f "$specs/package/schemas/3.0.0-without-\$id.json" ] && command -v npm >/dev/null; then
  mkdir -p "$specs" && (cd "$specs" && npm pack --silent "@asyncapi/specs@$ASYNCAPI_SPECS_VERSION" >/dev/null 2>&1) \
    && echo "$ASYNCAPI_SPECS_SHA256  $specs/asyncapi-specs-$ASYNCAPI_SPECS_VERSION.tgz" | sha256sum -c --quiet - \
    && tar xzf "$specs/asyncapi-specs-$ASYNCAPI_SPECS_VERSION.tgz" -C "$specs" \
    || { echo "could not fetch @asyncapi/specs $ASYNCAPI_SPECS_VERSION (or its digest differs)"; rm -rf "$specs"; }
fi
exec "$(dirname "$0")/apt-install.sh" "the tests" "${missing[@]}"
