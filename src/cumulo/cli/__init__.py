"""cumulo.cli."""
