"""Moved to paritybed.core.jsonfile; this re-export goes once every importer uses the new path."""

from paritybed.core.jsonfile import *  # noqa: F401,F403
