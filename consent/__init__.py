"""Consent: purposes, consent state and its enforcement."""
