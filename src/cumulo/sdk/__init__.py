"""What user code imports, and what runs inside a worker."""
