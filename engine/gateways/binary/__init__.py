"""The compact binary order-entry gateway: a fixed-layout frame protocol (`protocol`), its
asyncio server (`server`) and client (`client`)."""
