"""Local cluster tooling: the real Kafka broker from Maven jars, the demo, Prometheus/Grafana configuration."""
