"""`loom load`: an open-loop load generator for every gateway protocol."""
