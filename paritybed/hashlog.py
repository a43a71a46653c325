"""Moved to paritybed.core.hashlog; this re-export goes once every importer uses the new path."""

from paritybed.core.hashlog import *  # noqa: F401,F403
from paritybed.core.hashlog import GENESIS, _canonical, record_hash  # noqa: F401
