"""The write side and the shared base: the journal, its group commit and outbox; config, pools, logs."""
