"""In-app alerting: rules on a project's LLM aggregates, evaluated on a schedule by one server of a
cluster, with notifications by webhook, Slack-compatible webhook and e-mail (docs/ALERTS.md).

``rules`` validates definitions, ``evaluator`` measures and decides, ``channels`` delivers.
"""

# Plain tuples (no imports), so the CLI parser can offer them without loading pydantic.
METRICS = (
    "cost_usd",
    "error_rate",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "tokens",
    "requests",
)
COMPARISONS = (">", ">=", "<", "<=")
