"""Kafka side of kyc-sync: settings, client, decoding, the run loop, the CLI."""
