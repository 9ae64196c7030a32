"""Protobuf packages of the interest service."""
