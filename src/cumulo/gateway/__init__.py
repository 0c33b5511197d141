"""cumulo.gateway."""
