"""Errors a user can act on. Every message says what went wrong and what to do next.

The UI shows them as warnings, the CLI prints one line on stderr and exits non-zero, and the
HTTP API answers 4xx with a JSON body. Anything that is not a ``KBQAError`` is a bug.
"""

from __future__ import annotations


class KBQAError(Exception):
    """Base class for errors caused by input, configuration or the environment."""

    #: HTTP status the API maps this error to.
    status_code = 400
    #: The request parameter at fault, where the API knows it (OpenAI's ``error.param``).
    param: str | None = None


class UnsupportedFile(KBQAError):
    """The file's type has no loader."""

    status_code = 415


class EmptyDocument(KBQAError):
    """The file holds no text we can index."""

    status_code = 422


class CorruptDocument(KBQAError):
    """The file could not be parsed (damaged, truncated, or not what its suffix says)."""

    status_code = 422


class EncryptedDocument(KBQAError):
    """The file is password-protected."""

    status_code = 422


class FileTooLarge(KBQAError):
    """The file is over the configured size limit."""

    status_code = 413


class InvalidName(KBQAError):
    """A file or knowledge-base name cannot be used."""


class KnowledgeBaseNotFound(KBQAError):
    """No knowledge base has that name."""

    status_code = 404


class DocumentNotFound(KBQAError):
    """The knowledge base holds no file of that name."""

    status_code = 404


class EmptyKnowledgeBase(KBQAError):
    """A question was asked of a knowledge base that has no documents."""

    status_code = 400  # not 409: OpenAI clients retry a 409 (as a lock timeout), and asking again cannot help


class KnowledgeRootInUse(KBQAError):
    """Another kbqa process works on the same knowledge root."""

    status_code = 409


class ModelUnavailable(KBQAError):
    """A configured model cannot be found or loaded."""

    status_code = 503


class IncompatibleIndex(KBQAError):
    """A knowledge base was built with another embedding model than the one configured."""

    status_code = 400  # not 409, which OpenAI clients retry


class ConfigError(KBQAError):
    """The settings are invalid or ask for something this machine cannot do."""

    status_code = 503  # the server's settings, not the client's request: the service is unavailable as set up


class ContextLengthExceeded(ConfigError):
    """The prompt does not fit the model's context (OpenAI's code for it: ``context_length_exceeded``)."""

    status_code = 400  # the request's text or max_tokens: the client can send less


class DiskFull(KBQAError):
    """Too little free disk space under the knowledge root to write an index safely."""

    status_code = 507  # Insufficient Storage


class IndexDamaged(KBQAError):
    """The vector database cannot read a knowledge base's index (a write cut short, e.g. by a full disk)."""

    status_code = 503
