"""The paper's predictor: mean output length per log2 bucket of the input length.

It is the fallback whenever the LightGBM artifact cannot be used, so a default that needs no
data at all is always available.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from predictors.output_length.prediction import Prediction

# Order of magnitude of a chat reply, used only when no fitted table can be read at all.
FALLBACK_MEAN_TOKENS = 256.0
FALLBACK_P90_TOKENS = 768.0


def log2_bucket(n_tokens: int) -> int:
    """Bucket k holds lengths in [2**(k-1), 2**k); bucket 0 holds length 0."""
    return int(n_tokens).bit_length()


class BucketMeans(BaseModel):
    """Per-bucket mean and 90th percentile of the reply length; index = log2 bucket."""

    means: list[float]
    p90s: list[float]

    def lookup(self, input_tokens: int) -> Prediction:
        bucket = min(log2_bucket(input_tokens), len(self.means) - 1)
        return Prediction(mean=self.means[bucket], upper=self.p90s[bucket])


def fit_bucket_means(input_tokens: Sequence[int], reply_tokens: Sequence[float]) -> BucketMeans:
    """Fit the table; an empty bucket takes the value of the nearest fitted bucket below it
    (or the overall figure when none is below), so every bucket is defined."""
    buckets = np.array([log2_bucket(n) for n in input_tokens], dtype=np.int64)
    replies = np.asarray(reply_tokens, dtype=np.float64)
    if replies.size == 0:
        return default_bucket_means()
    overall_mean, overall_p90 = float(replies.mean()), float(np.quantile(replies, 0.9))
    means: list[float] = []
    p90s: list[float] = []
    for k in range(int(buckets.max()) + 1):
        in_bucket = replies[buckets == k]
        if in_bucket.size:
            means.append(float(in_bucket.mean()))
            p90s.append(float(np.quantile(in_bucket, 0.9)))
        else:
            means.append(means[-1] if means else overall_mean)
            p90s.append(p90s[-1] if p90s else overall_p90)
    return BucketMeans(means=means, p90s=p90s)


def default_bucket_means() -> BucketMeans:
    """A one-bucket table used when nothing fitted is available."""
    return BucketMeans(means=[FALLBACK_MEAN_TOKENS], p90s=[FALLBACK_P90_TOKENS])
