"""FedProx (Li et al., 2020): Flower's FedProx; the client adds (mu/2)·||w − w_global||²."""

from flwr.serverapp.strategy import FedProx as FlowerFedProx

from strategies.reply_guard import ReplyGuardMixin
from strategies.round_schedule import RoundScheduleMixin


class FedProx(RoundScheduleMixin, ReplyGuardMixin, FlowerFedProx):
    """FedProx: sends `proximal-mu` in the train config; aggregation is FedAvg's.

    Same parameters as :class:`flwr.serverapp.strategy.FedProx`.
    """
