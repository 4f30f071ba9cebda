"""A stand-in `docker` CLI for the compose target (MSA_DOCKER="python fake_docker.py").

Appends its argv (as one JSON line) to $FAKE_DOCKER_LOG. With $FAKE_DOCKER_FAIL set, prints it to stderr and exits
1, as docker does when no engine answers. Otherwise `… compose … ps` prints $FAKE_DOCKER_PS (a file of
`ps --format json` lines), `inspect --format …` prints "<id> <pid>" for each id, and everything else succeeds silently.
"""

import json
import os
import sys
import zlib

args = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")

if os.environ.get("FAKE_DOCKER_FAIL"):
    sys.stderr.write(os.environ["FAKE_DOCKER_FAIL"] + "\n")
    sys.exit(1)

if args[:1] == ["inspect"]:
    ids = [a for a in args[1:] if not a.startswith("--") and "{{" not in a]
    for cid in ids:
        print(f"{cid} {1000 + zlib.crc32(cid.encode()) % 30000}")
elif args[:1] == ["compose"] and "ps" in args:
    path = os.environ.get("FAKE_DOCKER_PS")
    if path:
        with open(path) as f:
            sys.stdout.write(f.read())
