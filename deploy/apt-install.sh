#!/usr/bin/env bash
# `deploy/apt-install.sh WHAT PACKAGE...`: install Debian packages that are missing, for WHAT ("the tests", "the
# benchmarks"), with no service started. Packages that ship servers (prometheus, postgresql, nginx) would start
# them on install: a policy-rc.d answering 101 ("action forbidden") keeps every service stopped meanwhile.
# Not root, or no apt-get: say what is missing and how to install it; the callers then name what they lack.
set -uo pipefail
what=$1; shift
[ $# -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "$what need Debian packages: $* (apt-get install --no-install-recommends $*)"
  exit 0
fi
echo "installing $* for $what (no service started)"
policy=/usr/sbin/policy-rc.d
[ ! -e "$policy" ] || mv "$policy" "$policy.msa-install"
printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >/dev/null; } || echo "could not install $*: $what will say what is missing"
rm -f "$policy"
[ ! -e "$policy.msa-install" ] || mv "$policy.msa-install" "$policy"
exit 0
