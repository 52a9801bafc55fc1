"""The exporter: the check scheduler, the Prometheus metrics, the HTTP server and status page,
the readiness log and the pre-market verification run.
"""
