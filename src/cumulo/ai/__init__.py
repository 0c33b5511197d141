"""AI: model serving with dynamic batching, embeddings, traffic forecasting, anomalies."""
