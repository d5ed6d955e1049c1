"""The projector: JetStream events in, read models (balances, vendor verifications) out."""
