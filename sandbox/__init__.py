"""The sandbox: loopback stand-ins for the Alpaca and Unusual Whales REST APIs, a simulated
stock-bot (UW daemon, main.py, supervisor) with named faults, the demo stack, and the fixtures
tests and benchmarks build bot roots with. Its own distribution (``trading-readiness[sandbox]``):
it imports the product; the product never imports it."""
