"""What Aladdin packs each worker to: shares of the SLOs, and the SLO risk one placement may take.

Best fit fills every worker up to its budget, so whatever the latency model gets wrong decides
whether the fullest workers miss, however many workers there are. The shares are therefore not
fixed constants but adapted online from the attainment of finished requests
(`placement.attainment_feedback.AttainmentFeedback`); a fixed share (`fixed=True`) remains as an
expert override. One object is shared by the policy, admission, the planner and the feedback
loop, so all of them read the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from placement.reply_lengths import ReplyLengths

DEFAULT_TARGET_ATTAINMENT = 0.99


def edge_miss_rate(target_attainment: float) -> float:
    """The miss rate the model may have at the packing edge: a quarter of what the target allows.

    Best fit places most requests at a worker's budget, so attainment at the edge is what a
    cluster with spare workers reaches, and it should be well above the target there. The rest
    of the target's misses is left for what placement cannot prevent at the fewest workers that
    meet the target: bursts beyond capacity, warm-ups, requests that wait."""
    if not 0.0 < target_attainment < 1.0:
        raise ValueError(f"target attainment must be in (0, 1), got {target_attainment!r}")
    return (1.0 - target_attainment) / 4.0


@dataclass
class PackingBudget:
    """The shares of the ATGT and TTFT SLOs a worker is packed to, the expected SLO misses one
    placement may cause among the requests already on a worker (`stall_risk`, see
    `placement.interference.stall_breaking_lengths`), and the reply-length distribution that
    risk is weighed with (None: prefill stalls are only counted on average)."""

    atgt_share: float = 1.0
    ttft_share: float = 1.0
    target_attainment: float = DEFAULT_TARGET_ATTAINMENT
    replies: ReplyLengths | None = field(default_factory=ReplyLengths)
    fixed: bool = False  # True: the shares are an expert's override and feedback leaves them
    # expected misses the placement of a request at its last chance may cause on its worker's
    # residents (placement.admission sets it from the misses the target leaves unspent)
    last_chance_risk: float = 0.0

    def __post_init__(self) -> None:
        for name in ("atgt_share", "ttft_share"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        edge_miss_rate(self.target_attainment)

    @property
    def stall_risk(self) -> float:
        """Expected misses one placement may cause on its worker's residents: the ATGT's half
        of the edge miss rate."""
        return edge_miss_rate(self.target_attainment) / 2

    @classmethod
    def for_target(cls, target_attainment: float = DEFAULT_TARGET_ATTAINMENT, atgt_margin: float | None = None,
                   replies: ReplyLengths | None = None) -> PackingBudget:
        """The budget a cluster packs to: adaptive towards `target_attainment`, or with its
        ATGT share fixed at `atgt_margin` (an expert override); reply lengths learned from
        `replies` on (default: the built-in prior)."""
        replies = ReplyLengths() if replies is None else replies
        if atgt_margin is None:
            return cls(replies=replies, target_attainment=target_attainment)
        return cls.fixed_shares(float(atgt_margin), replies=replies, target_attainment=target_attainment)

    @classmethod
    def fixed_shares(cls, atgt_share: float, ttft_share: float = 1.0, replies: ReplyLengths | None = None,
                     target_attainment: float = DEFAULT_TARGET_ATTAINMENT) -> PackingBudget:
        """A budget the feedback never changes (`placement.atgt_margin` set by an expert)."""
        return cls(atgt_share, ttft_share, target_attainment, replies, fixed=True)
