"""Loopback stand-ins for the Alpaca and Unusual Whales REST APIs (tests, sandbox, benchmarks)."""
