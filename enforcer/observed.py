"""Moved to paritybed.parity.observed; this re-export goes once every importer uses the new path."""

from paritybed.parity.observed import observed_policy, trace_from_events  # noqa: F401
