"""cumulo.security."""
