"""Dramatiq actors and the machinery that feeds them (broker, outbox relay, schedule)."""
