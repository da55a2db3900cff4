"""Errors raised by the generation engines; every message is one line saying what to do.

This module only defines exception types.
"""

from __future__ import annotations


class EngineError(RuntimeError):
    """Base class for engine errors."""


class UnknownEngineError(EngineError, ValueError):
    """``make_engine`` was asked for an engine kind that does not exist."""


class EngineUnavailableError(EngineError, ImportError):
    """The engine needs a package or hardware this machine does not have."""


class MissingChatTemplateError(EngineError, ValueError):
    """The model's tokenizer has no chat template, so conversations cannot be rendered."""


class EngineClosedError(EngineError):
    """``generate`` was called after ``close``."""


class ServerError(EngineError):
    """The engine's model server failed, died, did not start in time or did not answer."""
