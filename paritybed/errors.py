"""Moved to paritybed.core.errors; this re-export goes once every importer uses the new path."""

from paritybed.core.errors import *  # noqa: F401,F403
