"""Attribute-name tables: which instrumentation says what, mapped to our canonical fields.

Sources, in order of preference (the first name found wins):

* OpenTelemetry GenAI semantic conventions (``gen_ai.*``), current names and the deprecated
  ones still emitted by older instrumentations
  (https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/).
* OpenInference (Arize Phoenix's conventions: ``llm.*``, ``openinference.span.kind``,
  ``input.value``), https://github.com/Arize-ai/openinference/blob/main/spec/semantic_conventions.md
* OpenLLMetry / Traceloop legacy names (``gen_ai.prompt.N.*``, ``llm.usage.total_tokens``,
  ``traceloop.association.properties.*``).

docs/semantic-conventions.md renders these tables; a unit test keeps the two in step.
"""

from __future__ import annotations

# Canonical field → attribute names, most authoritative first.
PROVIDER = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
OPERATION = ("gen_ai.operation.name", "llm.request.type")
REQUEST_MODEL = ("gen_ai.request.model", "llm.request.model", "llm.model_name")
RESPONSE_MODEL = ("gen_ai.response.model", "llm.response.model")
INPUT_TOKENS = (
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
    "llm.token_count.prompt",
    "llm.usage.prompt_tokens",
)
OUTPUT_TOKENS = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
    "llm.usage.completion_tokens",
)
TOTAL_TOKENS = ("gen_ai.usage.total_tokens", "llm.token_count.total", "llm.usage.total_tokens")
CACHE_READ_TOKENS = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read",
    "gen_ai.usage.cached_tokens",
)
CACHE_WRITE_TOKENS = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_write.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write",
)
REASONING_TOKENS = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "gen_ai.usage.output_tokens.reasoning",
    "llm.token_count.completion_details.reasoning",
    "llm.usage.reasoning_tokens",
)
FINISH_REASONS = (
    "gen_ai.response.finish_reasons",
    "gen_ai.response.finish_reason",
    "llm.response.finish_reason",
)
# Seconds from request to first streamed chunk.
TIME_TO_FIRST_TOKEN_S = (
    "gen_ai.response.time_to_first_chunk",
    "gen_ai.server.time_to_first_token",
    "gen_ai.response.time_to_first_token",
)
SESSION_ID = (
    "gen_ai.conversation.id",
    "session.id",
    "langfuse.session.id",
    "traceloop.association.properties.session_id",
)
USER_ID = (
    "user.id",
    "enduser.id",
    "langfuse.user.id",
    "traceloop.association.properties.user_id",
)
# Looked up on the span first, then on the resource.
ENVIRONMENT = ("deployment.environment.name", "deployment.environment", "environment")
SERVICE_NAME = ("service.name",)

# Structured message lists (JSON strings or arrays) in the current GenAI conventions.
INPUT_MESSAGES = ("gen_ai.input.messages",)
OUTPUT_MESSAGES = ("gen_ai.output.messages",)
SYSTEM_INSTRUCTIONS = ("gen_ai.system_instructions",)
# Flattened message lists: prefix + "<index>." + suffix.
OPENLLMETRY_PROMPT_PREFIX = "gen_ai.prompt."
OPENLLMETRY_COMPLETION_PREFIX = "gen_ai.completion."
OPENINFERENCE_INPUT_PREFIX = "llm.input_messages."
OPENINFERENCE_OUTPUT_PREFIX = "llm.output_messages."
# Plain input/output payloads (OpenInference); used when no message list exists.
INPUT_VALUE = ("input.value", "gen_ai.prompt", "traceloop.entity.input")
OUTPUT_VALUE = ("output.value", "gen_ai.completion", "traceloop.entity.output")

# Span events that carry content (deprecated GenAI event-on-span form and the newer one).
MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
CHOICE_EVENT = "gen_ai.choice"
OPERATION_DETAILS_EVENT = "gen_ai.client.inference.operation.details"
CONTENT_PROMPT_EVENT = "gen_ai.content.prompt"
CONTENT_COMPLETION_EVENT = "gen_ai.content.completion"

# OpenInference span kinds → GenAI operation names.
OPENINFERENCE_KIND = "openinference.span.kind"
OPENINFERENCE_KIND_TO_OPERATION = {
    "LLM": "chat",
    "EMBEDDING": "embeddings",
    "TOOL": "execute_tool",
    "AGENT": "invoke_agent",
}
# OpenLLMetry llm.request.type values → GenAI operation names.
LLM_REQUEST_TYPE_TO_OPERATION = {
    "chat": "chat",
    "completion": "text_completion",
    "embedding": "embeddings",
    "rerank": "rerank",
}

# Provider names as instrumentations spell them → our canonical provider name.
PROVIDER_ALIASES = {
    "openai": "openai",
    "azure.ai.openai": "azure",
    "azure_openai": "azure",
    "az.ai.openai": "azure",
    "azure": "azure",
    "azure.ai.inference": "azure",
    "anthropic": "anthropic",
    "aws.bedrock": "aws",
    "bedrock": "aws",
    "aws": "aws",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "vertex_ai": "google",
    "google": "google",
    "gemini": "google",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "mistral": "mistral",
    "cohere": "cohere",
    "groq": "groq",
    "deepseek": "deepseek",
    "x_ai": "x-ai",
    "xai": "x-ai",
    "perplexity": "perplexity",
    "together": "together",
    "fireworks": "fireworks",
    "openrouter": "openrouter",
    "ibm.watsonx.ai": "ibm",
}

# The tables above, for docs/semantic-conventions.md (canonical field, attribute names).
FIELD_TABLE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("provider", PROVIDER),
    ("operation", OPERATION),
    ("request_model", REQUEST_MODEL),
    ("response_model", RESPONSE_MODEL),
    ("input_tokens", INPUT_TOKENS),
    ("output_tokens", OUTPUT_TOKENS),
    ("total_tokens", TOTAL_TOKENS),
    ("cache_read_tokens", CACHE_READ_TOKENS),
    ("cache_write_tokens", CACHE_WRITE_TOKENS),
    ("reasoning_tokens", REASONING_TOKENS),
    ("finish_reason", FINISH_REASONS),
    ("time_to_first_token_ms", TIME_TO_FIRST_TOKEN_S),
    ("session_id", SESSION_ID),
    ("user_id", USER_ID),
    ("environment", ENVIRONMENT),
    ("service_name", SERVICE_NAME),
    ("prompt", INPUT_MESSAGES + SYSTEM_INSTRUCTIONS + INPUT_VALUE),
    ("completion", OUTPUT_MESSAGES + OUTPUT_VALUE),
)
