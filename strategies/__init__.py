"""Server strategies: Flower's own, extended with reply checking, metadata and LR schedules."""

from strategies.async_buffer import AsyncBuffer
from strategies.clustering import Clustered
from strategies.drl_compress import DrlCompress
from strategies.fedadagrad import FedAdagrad
from strategies.fedavg import FedAvg
from strategies.fedprox import FedProx
from strategies.fusion import Fusion
from strategies.reply_guard import ClientReport, ReplyGuardMixin
from strategies.round_schedule import RoundScheduleMixin
from strategies.scaffold import Scaffold

__all__ = [
    "AsyncBuffer",
    "ClientReport",
    "Clustered",
    "DrlCompress",
    "FedAdagrad",
    "FedAvg",
    "FedProx",
    "Fusion",
    "ReplyGuardMixin",
    "RoundScheduleMixin",
    "Scaffold",
]
