"""gRPC serving: FAISS indexes fed by the delta stream, the InterestService, auth and limits."""
