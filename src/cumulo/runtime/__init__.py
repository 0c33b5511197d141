"""cumulo.runtime."""
