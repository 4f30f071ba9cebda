#!/usr/bin/env bash
# The Debian tools the benchmarks run, installed when missing (`make bench` and `make bench-quick` call this first):
# wrk, the load generator of bench/gateway_bench.py, and nginx (nginx-light), the reverse proxy its gateway rows
# are measured against. nginx's package would start its service on install: a policy-rc.d answering 101 ("action
# forbidden") keeps it stopped (the benchmark starts its own nginx, on free ports, and stops it).
# Not root, or no apt-get: say what is missing; the harness then skips those rows and names the package.
set -uo pipefail
missing=()
command -v wrk >/dev/null || missing+=(wrk)
{ command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } || missing+=(nginx-light)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "the benchmarks need Debian packages: ${missing[*]} (apt-get install --no-install-recommends ${missing[*]})"
  exit 0
fi
echo "installing ${missing[*]} for the benchmarks (no service started)"
policy=/usr/sbin/policy-rc.d
[ ! -e "$policy" ] || mv "$policy" "$policy.msa-bench"
printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null; } || echo "could not install ${missing[*]}: the harness will skip their rows and say so"
rm -f "$policy"
[ ! -e "$policy.msa-bench" ] || mv "$policy.msa-bench" "$policy"
exit 0
