"""The trainfarm master: REST API, job database, event consumer, dashboard and Prometheus metrics."""
