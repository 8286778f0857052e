"""The node agent: storage, network and runtime of the tenants on one server."""
