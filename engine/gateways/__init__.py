"""Gateways: the network faces of the exchange (REST/WebSocket, FIX 4.4, binary)."""
