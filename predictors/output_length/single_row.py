"""Single-row LightGBM prediction through the C API's "fast" entry points.

`Booster.predict` builds a predictor and checks its input on every call, which costs more than
walking the trees for one row; the fast config is built once and reused. Not thread-safe: each
`SingleRowPredictor` needs its own lock if shared between threads.
"""

from __future__ import annotations

import ctypes
import threading

import lightgbm as lgb
import numpy as np
from lightgbm.basic import _LIB, _c_str, _safe_call

_PREDICT_NORMAL = 0
_DTYPE_FLOAT64 = 1


class SingleRowPredictor:
    """Predict one float64 row of `n_features` with a booster, reusing a fast config."""

    def __init__(self, booster: lgb.Booster, n_features: int):
        self._booster = booster  # keeps the handle alive as long as the config
        self._config = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle, ctypes.c_int(_PREDICT_NORMAL), ctypes.c_int(0), ctypes.c_int(-1),
                ctypes.c_int(_DTYPE_FLOAT64), ctypes.c_int32(n_features), _c_str("num_threads=1"),
                ctypes.byref(self._config),
            )
        )
        self._out_len = ctypes.c_int64()
        self._result = np.zeros(1, dtype=np.float64)
        self._result_ptr = self._result.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._lock = threading.Lock()

    def predict(self, row: np.ndarray) -> float:
        """Raw score of one C-contiguous float64 row."""
        with self._lock:
            _safe_call(
                _LIB.LGBM_BoosterPredictForMatSingleRowFast(
                    self._config, row.ctypes.data_as(ctypes.c_void_p), ctypes.byref(self._out_len), self._result_ptr
                )
            )
            return float(self._result[0])

    def __del__(self) -> None:
        if getattr(self, "_config", None) is not None and self._config.value:
            _LIB.LGBM_FastConfigFree(self._config)
