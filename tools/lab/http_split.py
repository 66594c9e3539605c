#!/usr/bin/env python3
"""Opens COUNT fresh HTTP connections to URL and prints, as JSON, how many answers each body got
(the lab backends answer "hello from backend beN"). Failed requests are counted under "error"."""
import json
import sys
import urllib.request

url, count = sys.argv[1], int(sys.argv[2])
seen = {}
for _ in range(count):
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            key = r.read().decode().strip().rsplit(" ", 1)[-1]
    except Exception as e:  # noqa: BLE001 - every failure is counted, the test decides
        key = "error"
    seen[key] = seen.get(key, 0) + 1
print(json.dumps(seen))
