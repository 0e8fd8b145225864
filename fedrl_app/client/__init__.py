"""Client roles: one module per thing a ClientApp can be asked to do (see `fedrl_app.protocol.keys.ROLES`)."""
