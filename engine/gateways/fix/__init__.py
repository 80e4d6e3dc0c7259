"""The FIX 4.4 gateway: a sans-I/O codec (`codec`), the session state machine (`session`,
with `orders` for the application messages and `store` for persisted sequence numbers)
and a thin asyncio acceptor (`server`)."""
