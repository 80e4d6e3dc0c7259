"""The pure, deterministic core: (state, command) -> events.

No clock, no I/O, no asyncio, no telemetry (tests/test_pure_core.py checks every module of
this package). The node, its journal and its gateways are beside it in engine/."""
