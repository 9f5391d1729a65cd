#!/bin/sh
# An allot validator: refuse a change whose new guaranteed memory, added to
# what the rest of the tree under its parent already guarantees, exceeds
# what a cluster-capacity service says is free.
#
#   allotctl validator add capacity --prefix org --exec /path/to/capacity-validator.sh
#
# allotd runs it with the change as JSON on stdin:
#   {"operation": "quota.set", "path": "org/ads", "principal": "alice",
#    "old": {...quota...} | null, "new": {...quota...} | null}
# Exit 0 accepts; anything else rejects, and stdout/stderr becomes the
# message the client sees. CAPACITY_URL points at the capacity service (any
# HTTP endpoint answering {"free_memory_mb": N}); without it, a fixed
# FREE_MEMORY_MB (default 1000) stands in.
exec python3 -c '
import json, os, sys, urllib.request

change = json.load(sys.stdin)
new = change.get("new") or {}
old = change.get("old") or {}
asked = (new.get("guaranteed") or {}).get("memory_mb", 0)
had = (old.get("guaranteed") or {}).get("memory_mb", 0)

url = os.environ.get("CAPACITY_URL")
if url:
    with urllib.request.urlopen(url, timeout=1) as r:
        free = json.load(r)["free_memory_mb"]
else:
    free = int(os.environ.get("FREE_MEMORY_MB", "1000"))

if asked - had > free:
    print("capacity service: %d MB free, %s asks %d more" %
          (free, change["path"], asked - had))
    sys.exit(1)
'
