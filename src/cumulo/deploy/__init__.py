"""Deployment targets outside cumulo itself: Kubernetes manifests (k8s.py)."""
