"""The Prometheus rules and Alertmanager configuration, generated from the catalog."""
