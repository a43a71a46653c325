"""Moved to paritybed.scenarios (the scenario format layer); this re-export goes once every
importer uses the new path."""

from paritybed.scenarios import *  # noqa: F401,F403
