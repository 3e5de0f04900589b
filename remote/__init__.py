"""The client's view of the server: typed API client and chunk transfer."""
