"""Server strategies: Flower's own, extended with reply checking, metadata and LR schedules."""

from strategies.afedpg import AFedPG
from strategies.async_buffer import AsyncBuffer
from strategies.clustering import Clustered
from strategies.drl_compress import DrlCompress
from strategies.fedadagrad import FedAdagrad
from strategies.fedavg import FedAvg
from strategies.fedpg import FedPG
from strategies.fedprox import FedProx
from strategies.fusion import Fusion
from strategies.lapg import LAPG
from strategies.private import ClientSideDP, ServerSideDP
from strategies.reply_guard import ClientReport, ReplyGuardMixin
from strategies.robust import FedMedian, FedTrimmedAvg, Krum
from strategies.round_schedule import RoundScheduleMixin
from strategies.scaffold import Scaffold

__all__ = [
    "AFedPG",
    "AsyncBuffer",
    "ClientReport",
    "ClientSideDP",
    "Clustered",
    "DrlCompress",
    "FedAdagrad",
    "FedAvg",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "FedPG",
    "FedProx",
    "Fusion",
    "LAPG",
    "ReplyGuardMixin",
    "RoundScheduleMixin",
    "Scaffold",
    "ServerSideDP",
]
