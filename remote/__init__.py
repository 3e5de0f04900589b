"""The client's view of the server: typed API client and chunk transfer.

    remote.client    ApiClient (one method per endpoint), RetryPolicy
    remote.transfer  Transfer: upload_file, download_chunks, download_file
    remote.models    frozen dataclasses of what the server answers
    remote.errors    RemoteError and its tree, each with an errno

Talks to the server over HTTP only; never imports server/.
"""

from .client import ApiClient, ClientStatistics, RetryPolicy
from .errors import RemoteError
from .transfer import Transfer, TransferStatistics

__all__ = ["ApiClient", "ClientStatistics", "RemoteError", "RetryPolicy", "Transfer", "TransferStatistics"]
