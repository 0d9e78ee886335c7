"""The project's own exceptions.

Every error a user can cause or fix derives from :class:`KgclipError`; its
message names the input that failed and what to try next. The command line
prints such errors without a traceback. Lower packages (crawl, curate, train)
import their base classes from here, since ``kg`` is the bottom of the import
order.
"""

from __future__ import annotations


class KgclipError(Exception):
    """Base class: something the user can fix; the message says how."""


class ConfigError(KgclipError):
    """A configuration value is missing, malformed or inconsistent."""


class InputError(KgclipError):
    """An input file cannot be read or has the wrong format."""


class DumpFormatError(InputError):
    """A dump file's format or compression is not recognised."""


class MalformedDumpError(InputError):
    """Too many lines of a dump could not be parsed."""


class StoreError(KgclipError):
    """The embedded store is missing, locked or unusable."""


class QueryError(KgclipError):
    """A SPARQL query is invalid or uses a feature a backend cannot run."""


class EndpointError(KgclipError):
    """A SPARQL endpoint could not answer."""


class EndpointUnreachableError(EndpointError):
    """The connection to the endpoint was refused or could not be made."""


class EndpointTimeoutError(EndpointError):
    """The endpoint did not answer in time, or reported its own timeout."""


class EndpointHTTPError(EndpointError):
    """The endpoint answered with an HTTP error status."""


class EndpointQueryError(EndpointError):
    """The endpoint rejected the query (QLever's ``exception`` field, HTTP 400)."""
