"""fedrl: communication-efficient federated learning and federated RL on Flower."""
