"""Flower settings: never served without authentication.

FLOWER_BASIC_AUTH is "user:password" (several separated by commas); `make run` generates one and prints it.
"""

import os
import sys

address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
port = int(os.environ.get("FLOWER_PORT", "5555"))
_auth = os.environ.get("FLOWER_BASIC_AUTH", "")
if not _auth or ":" not in _auth:
    sys.exit("flower: FLOWER_BASIC_AUTH (user:password) is not set; refusing to serve Flower without authentication")
basic_auth = [pair.strip() for pair in _auth.split(",") if pair.strip()]
