"""Evidence export packages: choose what goes in, lay out a signed ZIP64 over the stored media, and
assemble it on download.

The media of a package are already held write-once, so the package does not copy them. Building it
is one streaming pass over every media object, which checks each object against the digest and size
recorded when it was stored (BLAKE3, or SHA-256 for items stored before BLAKE3 was kept; altered
evidence is never packaged) and computes the CRC-32 the zip needs (and, when asked, the SHA-256 of
the whole zip). Before it, every item's row is checked against its signed ``stored`` custody entry,
since the manifest takes each item's SHA-256 from the row. What is new (the custody documents, the
continuity report, VERIFY.txt, the signed manifest and checksum list, the public key, and every zip
header) is stored write-once as one object with the layout of the zip
(:mod:`chain_of_custody.package_layout`); that object is the package's evidence item (kind ``export``).
A download streams the zip from the layout and the items' locked objects, re-checking each media
hash on the way, and gives the same bytes every time. Memory stays at a few read blocks however
large the incident.

The parts: ``plan`` (what goes in), ``media`` (the pass that checks every media object), ``build``
(the layout and its custody), ``assemble`` (the zip on download), ``zip``, ``report`` (the
continuity report), ``links`` (expiring download links), ``jobs`` (builds as jobs that any worker
claims), ``api`` (the routes of those who ask for, follow and hand out packages) and ``downloads``
(the routes of a link's holder: its page and the download).
"""
