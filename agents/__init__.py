"""The mock agents (ambient scribe, CDS, prior authorization): clinical context in, FHIR requests
and egress connects out.  In model mode they emit trace rows (agents/emit.py); in live mode
``paritybed.agents.live`` replays those rows as real HTTP requests and TCP connects."""
