"""Prompts and their token spans (the fact generators and datasets build on this)."""

from graftlens.data.spans import SpanError, token_span

__all__ = ["SpanError", "token_span"]
