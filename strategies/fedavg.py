"""FedAvg (McMahan et al., 2017): Flower's FedAvg with reply checking, metadata and an LR schedule."""

from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from strategies.reply_guard import ReplyGuardMixin
from strategies.round_schedule import RoundScheduleMixin


class FedAvg(RoundScheduleMixin, ReplyGuardMixin, FlowerFedAvg):
    """Federated Averaging, weighted by `num-examples`.

    Same parameters as :class:`flwr.serverapp.strategy.FedAvg`; replies are checked
    by :class:`ReplyGuardMixin` and the learning rate comes from
    :class:`RoundScheduleMixin`.
    """
