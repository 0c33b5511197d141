"""cumulo.control."""
