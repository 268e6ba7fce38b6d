"""The cores' errors: whose fault a failure is decides who must fix it (like h11's Local/RemoteProtocolError).

A peer's bad message is not an error here: the cores record it (a ``Violation``, an ``Error`` event) and go on.
``InvalidState`` is the caller's fault, a bug in the shell that drives a core, so it raises.
"""

from __future__ import annotations


class InvalidState(Exception):
    """A core was called in a state that does not allow the call (a bug in the shell that drives it)."""
