"""Grafana dashboards and provisioning for trading-readiness, generated with grafanalib."""
