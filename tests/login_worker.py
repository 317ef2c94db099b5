"""A lamina-batch process using the stored login under $HOME, for test_credentials_process.py.

Usage: login_worker.py MODE [GO_FILE]. MODE `due`: one request whose token needs a refresh first; `401`: a 401 to
the current token (one refresh or adoption, then the request); `nowrite`: `due` with writes limited to 0 bytes
(RLIMIT_FSIZE). Prints a JSON line `ready` once resolved, waits for GO_FILE to exist when given, then one JSON
line: the final status, a tag of the header sent (never the token), and its refreshes/adoptions; or the error.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import resource
import signal
import sys
import time
from pathlib import Path

import httpx

from lamina_batch.credentials import OAuthSource, resolve_credentials
from lamina_batch.errors import LaminaBatchError


def tag(header: str) -> str:
    return hashlib.sha256(header.encode()).hexdigest()[:16]


def wait_for(go: Path) -> None:
    deadline = time.monotonic() + 30
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("go file never appeared")
        time.sleep(0.001)


async def main(mode: str, go: Path | None) -> int:
    if mode == "nowrite":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    try:
        source = resolve_credentials()
        assert isinstance(source, OAuthSource)
        header = await source.authorization() if mode == "401" else ""
        print(json.dumps({"ready": True}), flush=True)
        if go is not None:
            wait_for(go)
        if mode == "401":
            assert await source.unauthorized(header)
        header = await source.authorization()
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"{source.base_url}/v1/apps", headers={"Authorization": header})
    except LaminaBatchError as exc:
        print(json.dumps({"error": str(exc), "type": type(exc).__name__}), flush=True)
        return 2
    result = {"status": r.status_code, "tag": tag(header), "refreshes": source.refreshes, "adopted": source.adopted}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    go_file = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    sys.exit(asyncio.run(main(sys.argv[1], go_file)))
