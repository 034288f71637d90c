"""What the demo (examples/demo.py), the tests and the benchmarks share to run real things
on this machine: the multi-arch busybox base image (``busybox_image``), Debian's
docker-registry on loopback (``registry``), a dockyard cluster of loopback nodes
started through the CLI (``local_cluster``) and what a service's processes are and hold
(``processes``).

Not part of dockyard: none of its four packages imports this one.  examples/ must not
import tests/, so what both need lives here; tests/support re-exports it.
"""
