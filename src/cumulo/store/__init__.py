"""cumulo.store."""
