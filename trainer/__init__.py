"""Model and continual trainer: the servable ``Ranker``, feature spec, ``Batch``, training loop and snapshots."""
