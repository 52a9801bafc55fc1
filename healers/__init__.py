"""Healers: the Alertmanager webhook receiver that runs configured, safe actions once and proves them."""
