"""Tasks: what a client trains and how the server evaluates it."""
