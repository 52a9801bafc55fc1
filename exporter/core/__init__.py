"""The core: the failure-point catalog, the config, the result model and the check engine.

Imports nothing else of the product; every other layer builds on it.
"""
