"""Subject access requests: a person filmed asks for their footage, and the trust has one calendar month.

A request is an incident of its own (so the one access rule of ``incidents.access`` decides who sees
it, its footage and its packages) with a record of the requester, the dates and the answer. Its
footage is found by wearer, site and time window among what the caller may see, linked to the
request's incident, redacted so that only the requester stays visible (a redaction version with
the requester's track excluded) and exported like any package. The parts: ``models`` (the table),
``service`` (dates, search, record changes, each a custody entry) and ``api`` (the routes).
"""
