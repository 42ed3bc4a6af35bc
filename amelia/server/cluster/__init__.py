"""Several server processes, one database: run ownership, leases, fencing, shared events."""
