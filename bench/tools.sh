#!/usr/bin/env bash
# The Debian tools the benchmarks run, installed when missing (`make bench` and `make bench-quick` call this first):
# wrk, the load generator of bench/gateway_bench.py, and nginx (nginx-light), the reverse proxy its gateway rows
# are measured against (deploy/apt-install.sh keeps nginx's service stopped: the benchmark starts its own nginx,
# on free ports, and stops it). Not root, or no apt-get: the harness skips those rows and names the package.
set -uo pipefail
missing=()
command -v wrk >/dev/null || missing+=(wrk)
{ command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } || missing+=(nginx-light)
exec "$(dirname "$0")/../deploy/apt-install.sh" "the benchmarks" "${missing[@]}"
