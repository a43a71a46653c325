"""Moved to paritybed.agents.trace; this re-export goes once every importer uses the new path."""

from paritybed.agents.trace import *  # noqa: F401,F403
from paritybed.agents.trace import TraceBuilder, write_trace  # noqa: F401
