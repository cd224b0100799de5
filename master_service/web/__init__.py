"""HTTP: the JSON API, the control API, Prometheus and the dashboard."""
