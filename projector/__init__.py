"""The projector: follows the journal into read models (balances, vendor verifications)."""
