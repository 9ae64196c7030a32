"""Bench-only references (never served): LightGCN and MF with their BPR trainer, and the training-free
scorers (popularity, random, GF-CF). Only bench/ and tests/ import them (`tests/test_rooms.py`)."""
