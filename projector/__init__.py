"""The projector: a follower of the journal that builds the read models (balances, vendor verifications)."""
