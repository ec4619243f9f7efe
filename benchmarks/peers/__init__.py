"""Peer servers (Triton via PyTriton, LitServe) serving a package's full network, for the
side-by-side benchmark. They run in their own virtual environments (``make peers``) and import
only ``models`` from this repository."""
