"""Reading a fuzzed connection to its end."""

from __future__ import annotations

import asyncio


async def read_to_eof(reader: asyncio.StreamReader, timeout: float, out: dict) -> bool:
    """Read into out["data"] until the server closes; False when it is still open after
    `timeout` (a hang). A reset counts as closed."""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                out["data"] += chunk
    except TimeoutError:
        return False
    except (ConnectionError, OSError):
        pass
    return True
