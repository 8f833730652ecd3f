"""Flower ServerApp of fedcodec: loads the pretrained codec, sends only the adaptable subset and the base
identity hash, aggregates with the configured strategy, checkpoints every round, resumes, and exports the
merged adapted codec. The logic lives in :mod:`server.federation` (plain functions); the run-config schema
in :mod:`fedcodec.run_config` (shared with the ClientApp, so a hospital imports nothing of the server)."""
