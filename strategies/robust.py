"""Robust aggregation: Flower's FedMedian, FedTrimmedAvg and Krum with reply checking and the LR schedule."""

from flwr.serverapp.strategy import FedMedian as FlowerFedMedian
from flwr.serverapp.strategy import FedTrimmedAvg as FlowerFedTrimmedAvg
from flwr.serverapp.strategy import Krum as FlowerKrum

from strategies.reply_guard import ReplyGuardMixin
from strategies.round_schedule import RoundScheduleMixin


class FedMedian(RoundScheduleMixin, ReplyGuardMixin, FlowerFedMedian):
    """Coordinate-wise median of the client models (Yin et al., 2018)."""


class FedTrimmedAvg(RoundScheduleMixin, ReplyGuardMixin, FlowerFedTrimmedAvg):
    """Coordinate-wise mean after cutting the `beta` fraction of largest and smallest values."""


class Krum(RoundScheduleMixin, ReplyGuardMixin, FlowerKrum):
    """Krum (Blanchard et al., 2017): the client model closest to its n − f − 2 nearest neighbours."""
