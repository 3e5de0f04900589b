"""Blob stores: where chunk bytes live, and the signed URLs that let clients move them directly."""
