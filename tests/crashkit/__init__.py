"""Crash-test kit: a driver process that runs an ExchangeNode under a deterministic client
order flow (tests/crashkit/driver.py), killed with SIGKILL by tests/test_crash_recovery.py."""
