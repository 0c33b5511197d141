"""cumulo.observability."""
