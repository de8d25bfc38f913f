"""predict.py's Predictor with `tests.faults` installed: Cog's server runs it as
`COG_PREDICT_TYPE_STUB=tests/faulty_predictor.py:Predictor`."""

import tests.faults

tests.faults.install()

from predict import Predictor  # noqa: E402,F401
