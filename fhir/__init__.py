"""paritybed.fhir: the embedded FHIR R4 server and the loader into any FHIR server.

When the repository root is on ``sys.path`` (``python -m pytest`` or ``python -m benchmarks``
run from the checkout), this folder is importable as a top-level ``fhir`` package and would
shadow the ``fhir`` namespace package that ``fhir.resources`` lives in.  Extending ``__path__``
with the other ``fhir`` folders on ``sys.path`` keeps ``import fhir.resources`` working then.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
