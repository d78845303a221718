"""Tools the model can call: definitions, implementations and the registry."""
