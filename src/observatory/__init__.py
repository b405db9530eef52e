"""LLM Observatory: OpenTelemetry-native observability for LLM applications."""

__version__ = "0.1.0"
