"""Every record name, config key and flag the server and the clients exchange, defined once for both sides.

A message's content is a RecordDict. Server → client: the global model (`ARRAYS`), the train or
evaluate config (`CONFIG`), and, for SCAFFOLD, the server control variate (`CONTROL`). Client →
server: the model or an update in one of the reply records below, the metrics (`METRICS`), the
metadata (`METADATA`, see `fedrl_app.protocol.metadata`) and, for Fusion, shared experience.

The client picks what to do from one config entry, `ROLE`: the registry
(`fedrl_app.server.registry`) decides it per strategy and task, and the ServerApp puts it into
every train and evaluate config. Options that only make sense inside a role (share experience,
be lazy, the controller's settings) are separate keys, set by the strategy that needs them.
"""

from __future__ import annotations

# --- records of a message's RecordDict ------------------------------------------------------------
ARRAYS = "arrays"                          # ArrayRecord: the global model (down) or the client's model (up)
CONFIG = "config"                          # ConfigRecord: what the server asks for this round
METRICS = "metrics"                        # MetricRecord: the client's numbers; NUM_EXAMPLES weights them
METADATA = "metadata"                      # ConfigRecord: the pickled ClientMetadata, under METADATA_PAYLOAD
METADATA_PAYLOAD = "payload"
CONTROL = "control"                        # SCAFFOLD: server control variate c (down)
CONTROL_DELTA = "control-delta"            # SCAFFOLD: Δc_i (up)
CONTROLLER = "controller"                  # drl-compress, shared controller: its Q-network (down)
DELTA = "delta"                            # drl-compress: a dense update Δ (full sync, up)
DELTA_COMPRESSED = "delta-compressed"      # drl-compress: top-k + int8 update (up; see protocol.codecs)
GRADIENT = "gradient"                      # policy gradient: the estimate ĝ(θ) (up)
EXPERIENCE = "experience"                  # Fusion: gzip-packed transitions (up; see protocol.experience)

# --- errors -----------------------------------------------------------------------------------------
UNAVAILABLE = "unavailable"                # reason prefix of the error reply of a client that dropped out
UNAVAILABLE_CODE = 1001                    # its error code (Flower's own codes are below 100)

# --- metric keys -------------------------------------------------------------------------------------
NUM_EXAMPLES = "num-examples"
PARTITION_ID = "partition-id"              # a query reply's partition (the server orders its node list by it)
NUM_PARTITIONS = "num-partitions"          # a query reply's federation size (the server waits for that many nodes)

# --- config keys (server → client) ------------------------------------------------------------------
SERVER_ROUND = "server-round"              # set by Flower's strategies
LR = "lr"                                  # this round's client learning rate (or the PG server step)
ROLE = "role"                              # which client module answers: one of ROLES
QUERY = "query"                            # a query message's question: PARTITION_ID is the one there is
ATTEMPT = "attempt"                        # async: the dispatch's sequence number (a retry draws availability anew)
LOCAL_EPOCHS = "local-epochs"
BATCH_SIZE = "batch-size"
MOMENTUM = "momentum"
PROXIMAL_MU = "proximal-mu"                # set by Flower's FedProx

# role "sync-controller" (drl-compress)
BYTES_PENALTY = "bytes-penalty"
PRUNE_THRESHOLD = "prune-threshold"
NUM_SERVER_ROUNDS = "num-server-rounds"
SYNC_POLICY = "sync-policy"
CONTROLLER_REWARD = "controller-reward"
ROUND_PACE_S = "round-pace-s"              # float: last round's slowest download + compute on the virtual clock

# role "dqn" (Fusion)
SHARE_EXPERIENCE = "share-experience"      # bool: send a sample of recent transitions too

# role "policy-gradient" (LAPG)
LAZY = "lapg"                              # bool: the client may skip its upload (LAPG's condition)
LAPG_THRESHOLD = "lapg-threshold"
LAPG_MEMORY = "lapg-memory"
LAPG_RECENT_STEPS = "lapg-recent-steps"

# --- roles ---------------------------------------------------------------------------------------------
ROLE_SUPERVISED = "supervised"             # MNIST: train the CNN, reply with the model (SCAFFOLD: + Δc_i)
ROLE_SYNC_CONTROLLER = "sync-controller"   # MNIST: train, then a DQN controller decides what update to send
ROLE_DQN = "dqn"                           # RL: interact with a DQN-family agent, reply with the Q-network
ROLE_POLICY_GRADIENT = "policy-gradient"   # RL: sample episodes, reply with a gradient estimate
ROLES = (ROLE_SUPERVISED, ROLE_SYNC_CONTROLLER, ROLE_DQN, ROLE_POLICY_GRADIENT)
