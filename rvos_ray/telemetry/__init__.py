"""Telemetry: per-stage metrics (:mod:`.metrics`, exported through Ray), the Grafana dashboard
(:mod:`.dashboard`), the HTML run report (:mod:`.report`) and progress-bar rates
(:mod:`.progress`). Importing this package imports nothing heavy."""
